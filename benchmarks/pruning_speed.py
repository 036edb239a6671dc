"""Inference time of a dense CNN vs the same CNN pruned irregularly vs pruned by channels and cut down.

    python benchmarks/pruning_speed.py [--model madry_mnist_cnn] [--amount 0.5] [--batch-size 64]

Three versions of one network (all Conv/Linear layers but the classifier pruned by ``--amount``):

* dense: as built;
* unstructured: L1 unstructured pruning, zeros scattered in tensors of unchanged shape. Dense
  kernels multiply the zeros all the same, so this is expected to run as fast as dense, no faster;
* channels removed: Ln structured pruning of whole output channels/neurons (dim 0), then those
  channels cut out of the layers (and the matching inputs of the next layer), giving a smaller
  dense network that computes the same function.

Times are medians over interleaved repeats in the same run; the ratios are dense time / version
time. The cut is done by hand for SmallCNN (research/models/cnn.py: convs, BatchNorm, ReLU, pooling
in ``features``, then ``hidden`` and ``fc``); a library such as torch-pruning generalises it.
"""

from __future__ import annotations

import argparse
import copy

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils import prune

from research.models import create_model
from research.models.cnn import SmallCNN
from research.quantization import latencies


def prunable(model: SmallCNN) -> list[nn.Module]:
    """Every Conv/Linear layer but the classifier."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear) and m is not model.fc]


def prune_unstructured(model: SmallCNN, amount: float) -> SmallCNN:
    model = copy.deepcopy(model)
    for layer in prunable(model):
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")  # fold the mask: a plain tensor with zeros
    return model


def prune_channels(model: SmallCNN, amount: float) -> SmallCNN:
    """Zero the ``amount`` of output channels/neurons of smallest L1 norm in each layer, shapes unchanged.

    The pruned channels' bias and BatchNorm scale/shift are zeroed too, so that they output exactly
    0 and cutting them out changes nothing (the Pruning callback prunes weights only; a cut of its
    models must fold a pruned channel's constant output into the next layer's bias).
    """
    model = copy.deepcopy(model)
    layers = list(model.features) + [model.hidden]
    for i, layer in enumerate(layers):
        if layer not in prunable(model):
            continue
        prune.ln_structured(layer, "weight", amount=amount, n=1, dim=0)
        prune.remove(layer, "weight")
        dead = layer.weight.detach().flatten(1).abs().sum(1) == 0
        with torch.no_grad():
            if layer.bias is not None:
                layer.bias[dead] = 0
            following = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(following, nn.BatchNorm2d):
                following.weight[dead], following.bias[dead] = 0, 0
    return model


def _alive(weight: torch.Tensor) -> torch.Tensor:
    return (weight.detach().flatten(1).abs().sum(1) > 0).nonzero().flatten()


def remove_dead_channels(model: SmallCNN) -> SmallCNN:
    """A smaller SmallCNN without the all-zero output channels/neurons of ``model``'s convs and hidden layer."""
    model = copy.deepcopy(model).eval()
    keep_in = torch.arange(model.in_chans)  # input channels of the next conv that survive
    new_features = []
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            keep_out = _alive(layer.weight)
            conv = nn.Conv2d(
                len(keep_in), len(keep_out), layer.kernel_size, stride=layer.stride, padding=layer.padding,
                bias=layer.bias is not None,
            )
            conv.weight.data = layer.weight.data[keep_out][:, keep_in].clone()
            if layer.bias is not None:
                conv.bias.data = layer.bias.data[keep_out].clone()
            new_features.append(conv)
            keep_in = keep_out
        elif isinstance(layer, nn.BatchNorm2d):
            bn = nn.BatchNorm2d(len(keep_in), eps=layer.eps).eval()
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).data = getattr(layer, name).data[keep_in].clone()
            new_features.append(bn)
        else:
            new_features.append(layer)  # ReLU, pooling: no channel dimension of their own
    features = nn.Sequential(*new_features)
    with torch.no_grad():
        _, c, h, w = model.features(torch.zeros(1, model.in_chans, 28, 28)).shape
    # the hidden layer reads the flattened (C, H, W) map: keep the columns of the surviving channels
    columns = rearrange(torch.arange(c * h * w), "(c hw) -> c hw", c=c)[keep_in].flatten()
    keep_neurons = _alive(model.hidden.weight)
    cut = SmallCNN(
        features=features, feature_shape=(len(keep_in), h, w), hidden_dim=len(keep_neurons),
        in_chans=model.in_chans, num_classes=model.num_classes,
    ).eval()
    cut.hidden.weight.data = model.hidden.weight.data[keep_neurons][:, columns].clone()
    cut.hidden.bias.data = model.hidden.bias.data[keep_neurons].clone()
    cut.fc.weight.data = model.fc.weight.data[:, keep_neurons].clone()
    cut.fc.bias.data = model.fc.bias.data.clone()
    return cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="madry_mnist_cnn", help="a SmallCNN: madry_mnist_cnn or five_layer_cnn")
    parser.add_argument("--amount", type=float, default=0.5, help="fraction of weights / channels pruned")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = create_model(args.model).eval()
    if not isinstance(dense, SmallCNN):
        raise ValueError(f"the channel cut is written for SmallCNN models; {args.model} is a {type(dense).__name__}")
    unstructured = prune_unstructured(dense, args.amount).eval()
    zeroed = prune_channels(dense, args.amount).eval()
    cut = remove_dead_channels(zeroed)
    x = torch.rand(args.batch_size, dense.in_chans, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(cut(x), zeroed(x), atol=1e-4, rtol=1e-4)  # the cut changes nothing
    versions = {"dense": dense, f"unstructured {args.amount:.0%} zeros": unstructured,
                f"{args.amount:.0%} channels zeroed": zeroed, f"{args.amount:.0%} channels removed": cut}
    times = latencies(list(versions.values()), x, repeats=args.repeats)
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| version | parameters | zero weights | ms / batch | speed-up vs dense |")
    print("|---|---:|---:|---:|---:|")
    for (name, model), t in zip(versions.items(), times, strict=True):
        params = sum(p.numel() for p in model.parameters())
        zeros = sum(int((p == 0).sum()) for p in model.parameters()) / params
        print(f"| {name} | {params:,} | {zeros:.1%} | {1e3 * t:.2f} | {times[0] / t:.2f}x |")


if __name__ == "__main__":
    main()
