"""Models as plain ``nn.Module`` s, built by name through the registry."""

from research.models import bert, cnn, mae, resnet, swin, vit  # noqa: F401  (registers the factories)
from research.models.registry import build_model, create_model, list_models, register_model
from research.models.weights import import_weights

__all__ = ["build_model", "create_model", "list_models", "register_model", "import_weights"]
