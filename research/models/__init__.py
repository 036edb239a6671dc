"""Models as plain ``nn.Module`` s, built by name through the registry."""

from research.models import (  # noqa: F401  (importing a family registers its factories)
    bert,
    bert_classifier,
    cnn,
    dcgan,
    gru_classifier,
    gru_seq2seq,
    mae,
    mlp_regressor,
    mobilenet,
    resnet,
    swin,
    transformer,
    vit,
)
from research.models.registry import build_model, create_model, list_models, register_model
from research.models.weights import import_weights

__all__ = ["build_model", "create_model", "list_models", "register_model", "import_weights"]
