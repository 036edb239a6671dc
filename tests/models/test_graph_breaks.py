"""Our models compile whole: ``torch.compile(model, fullgraph=True)`` traces each without a graph break.

A graph break splits the compiled code at a Python construct dynamo cannot trace (a
data-dependent branch, ``.item()``, an untraceable call), which costs speed and, with
``fullgraph=True``, raises. Tiny models of each family run in training mode (dropout off, so
the outputs are comparable) through the ``aot_eager`` backend: dynamo's capture and AOTAutograd's
forward/backward split without Inductor's code generation, so the test takes seconds; the
outputs and the gradients must equal eager's; the Transformer's incremental decoding (a KV cache growing in
place) also compiles whole. Swin's window masks take dynamo longest: slow.
"""

import pytest
import torch

from research.models.bert import BertForMaskedLM
from research.models.mae import MaskedAutoencoderViT
from research.models.resnet import ResNet
from research.models.swin import SwinTransformer
from research.models.transformer import Transformer
from research.models.vit import VisionTransformer


def images() -> tuple:
    return (torch.rand(2, 3, 16, 16),)


CASES = {
    "resnet": (lambda: ResNet(layers=(1, 1), widths=(8, 16), stem="cifar", shortcut="A", num_classes=10), images),
    "vit": (lambda: VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10),
            images),
    "swin": (lambda: SwinTransformer(img_size=16, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                                     window_size=4, num_classes=10), images),
    # the masking noise is given, so eager and compiled keep the same patches
    "mae": (lambda: MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                                         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2),
            lambda: (torch.rand(2, 3, 16, 16), 0.75, torch.rand(2, 16))),
    "bert": (lambda: BertForMaskedLM(vocab_size=50, embed_dim=32, depth=2, num_heads=2, max_positions=16, drop_rate=0.0,
                                     attn_drop_rate=0.0),
             lambda: (torch.randint(0, 50, (2, 8)),)),
    # the encoder-decoder forward of teacher forcing, with padding (id 0) in the source
    "transformer": (lambda: Transformer(vocab_size=50, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                                        ffn_dim=64, max_positions=16, dropout=0.0),
                    lambda: (torch.cat([torch.randint(1, 50, (2, 5)), torch.zeros(2, 2, dtype=torch.long)], 1),
                             torch.randint(1, 50, (2, 5)))),
}


def tensors(output) -> list[torch.Tensor]:
    return [output] if isinstance(output, torch.Tensor) else [t for t in output if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "swin" else n for n in CASES])
def test_the_model_compiles_whole_and_matches_eager(name):
    build, inputs = CASES[name]
    torch.manual_seed(0)
    model, args = build().train(), inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    try:
        outputs, grads = [], []
        for m in (model, compiled):  # each backward before the next forward moves BatchNorm's running statistics
            model.zero_grad()
            outputs.append(tensors(m(*args)))
            sum(o.float().sum() for o in outputs[-1] if o.is_floating_point()).backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    finally:
        torch._dynamo.reset()
    for eager, traced in zip(*outputs, strict=True):
        torch.testing.assert_close(traced, eager)
    assert grads[0]
    for eager, traced in zip(*grads, strict=True):
        torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-5)


def test_incremental_decoding_compiles_whole_and_matches_eager():
    # Transformer.decode with a KV cache that grows in place by one position a call, as greedy and beam search use it
    torch.manual_seed(0)
    model = CASES["transformer"][0]().eval()
    src, tgt = CASES["transformer"][1]()
    torch._dynamo.reset()
    decode = torch.compile(model.decode, fullgraph=True, backend="aot_eager", dynamic=True)
    try:
        with torch.no_grad():
            memory, eager_cache, compiled_cache = model.encode(src), None, None
            for i in range(tgt.shape[1]):
                eager, eager_cache = model.decode(tgt[:, i:i + 1], memory, eager_cache)
                traced, compiled_cache = decode(tgt[:, i:i + 1], memory, compiled_cache)
                torch.testing.assert_close(traced, eager)
    finally:
        torch._dynamo.reset()
    assert compiled_cache.length == eager_cache.length == tgt.shape[1]
