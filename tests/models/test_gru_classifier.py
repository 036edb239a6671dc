import pytest
import torch

from research.models import create_model
from research.models.gru_classifier import GRUClassifier


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("gru_classifier_tiny", **({"vocab_size": 12, "num_classes": 3} | kw)).eval()


def test_logits_per_sequence():
    model = tiny()
    tokens = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0]])
    assert model(tokens, torch.tensor([3, 2])).shape == (2, 3)
    assert isinstance(create_model("gru_classifier", vocab_size=30, num_classes=2), GRUClassifier)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_padding_does_not_change_a_words_logits(bidirectional, num_layers):
    """Packed sequences: the final state is read at each word's own end, never after its padding."""
    model = tiny(bidirectional=bidirectional, num_layers=num_layers)
    word = torch.tensor([[7, 3, 9]])
    alone = model(word, torch.tensor([3]))
    batch = torch.tensor([[2, 3, 4, 5, 6, 7, 8], [7, 3, 9, 0, 0, 0, 0], [4, 4, 0, 0, 0, 0, 0]])
    together = model(batch, torch.tensor([7, 3, 2]))
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)
    wider = torch.nn.functional.pad(word, (0, 10), value=0)
    torch.testing.assert_close(model(wider, torch.tensor([3])), alone, rtol=1e-5, atol=1e-6)


def test_lengths_default_to_the_non_padding_tokens():
    model = tiny()
    tokens = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0]])
    torch.testing.assert_close(model(tokens), model(tokens, torch.tensor([3, 2])))


def test_word_order_matters():
    model = tiny()
    assert not torch.allclose(model(torch.tensor([[2, 3, 4]])), model(torch.tensor([[4, 3, 2]])))


def test_padding_embedding_gets_no_gradient():
    model = tiny().train()
    model(torch.tensor([[2, 3, 0], [4, 0, 0]])).sum().backward()
    assert model.embedding.weight.grad[0].abs().sum() == 0
    assert model.embedding.weight.grad[2].abs().sum() > 0


def test_bad_input_is_a_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match="every sequence needs 1 to 3 tokens .* lengths from 0"):
        model(torch.tensor([[2, 3, 4], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 12\), got 0 to 12"):
        model(torch.tensor([[2, 12, 0]]))
    with pytest.raises(ValueError, match="shape \\(B, L\\)"):
        model(torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="pad_id=12 is not a token id"):
        tiny(pad_id=12)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        tiny(num_classes=1)
    with pytest.raises(ValueError, match="gru_classifier_tiny.*vocab_size"):
        create_model("gru_classifier_tiny", num_classes=2)
