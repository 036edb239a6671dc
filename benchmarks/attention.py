"""Our attention (SDPA) against naive softmax(QK^T/sqrt(d))V, and transformer_small training throughput.

    python benchmarks/attention.py [--device cpu|cuda] [--repeats 7] [--batch-size 8]
                                   [--seq-lens 128 512] [--skip-train]

Part 1, attention: ``research.layers.Attention`` against a naive module with the same weights (the
same fused qkv and output projections around an explicit softmax(QK^T / sqrt(d)) V), d 512, 8 heads,
forward + backward of a sum. Reported per sequence length, as ours / naive:

- time: median seconds of fwd+bwd, the two timed back to back in alternating order;
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the inputs; on CPU the peak of the
  allocation timeline that ``torch.profiler.profile(profile_memory=True)`` records (allocations
  and frees in order, summed), and, as a cross-check, the bytes the autograd graph saves for
  backward (``saved_tensors_hooks``), where the naive (B, h, N, N) attention matrix shows up.

Part 2, training: tokens per second of a full training step (forward, label-smoothed cross
entropy, backward, Adam) of ``transformer_small`` and of a ``torch.nn.Transformer`` of the same size
(d 256, 3+3 layers, 4 heads, FFN 1024, post-norm, same tied and scaled embeddings and sinusoidal
positions), measured in the same process; tokens are non-pad target tokens.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.profiler import ProfilerActivity, profile

from research.layers import Attention, sincos_pos_embed_1d
from research.models import create_model


class NaiveAttention(nn.Module):
    """The textbook formula with an explicit (B, h, N, N) score matrix, on ``Attention``'s weights."""

    def __init__(self, ours: Attention) -> None:
        super().__init__()
        self.ours = ours

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.ours.num_heads
        q, k, v = self.ours.qkv(x).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(c // h)).softmax(-1)  # (B, h, N, N)
        return self.ours.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(module: nn.Module, x: torch.Tensor) -> None:
    module(x).sum().backward()


def seconds(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Kineto's "[memory]" events are single allocations (+bytes) and frees (-bytes); summed in time
    # order they give the allocation level. (prof.events() keeps only those outside any op.)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def saved_for_backward_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct tensors the autograd graph of ``module(x)`` keeps for backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    del out
    return sum(storages.values()) - x.untyped_storage().nbytes() * (x.untyped_storage().data_ptr() in storages)


def bench_attention(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    ours = Attention(512, 8).to(device)
    naive = NaiveAttention(ours)
    print(f"Attention, d 512, 8 heads, batch {args.batch_size}, fwd+bwd on {device}, torch {torch.__version__}")
    print(
        "| N | ours ms | naive ms | time ours/naive | ours peak MiB | naive peak MiB | peak ours/naive "
        "| saved-for-backward ours/naive MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.seq_lens:
        x = torch.randn(args.batch_size, n, 512, device=device, requires_grad=True)
        with torch.no_grad():  # same weights must mean the same function, or the timing compares nothing
            torch.testing.assert_close(ours(x), naive(x), atol=1e-4, rtol=1e-4)
        modules = {"ours": ours, "naive": naive}
        for module in modules.values():
            fwd_bwd(module, x)  # warm-up
        times = {key: [] for key in modules}
        for repeat in range(args.repeats):
            for key in list(modules) if repeat % 2 == 0 else list(modules)[::-1]:
                times[key].append(seconds(lambda m=modules[key], x=x: fwd_bwd(m, x), device))
        ms = {key: statistics.median(t) * 1e3 for key, t in times.items()}
        peak = {key: peak_bytes(lambda m=m, x=x: fwd_bwd(m, x), device) / 2**20 for key, m in modules.items()}
        saved = {key: saved_for_backward_bytes(m, x) / 2**20 for key, m in modules.items()}
        print(
            f"| {n} | {ms['ours']:.1f} | {ms['naive']:.1f} | {ms['ours'] / ms['naive']:.2f} "
            f"| {peak['ours']:.1f} | {peak['naive']:.1f} | {peak['ours'] / peak['naive']:.2f} "
            f"| {saved['ours']:.1f} / {saved['naive']:.1f} |"
        )


class TorchTransformer(nn.Module):
    """``torch.nn.Transformer`` wrapped like ours: tied sqrt(d)-scaled embeddings, sinusoidal positions."""

    def __init__(self, *, vocab_size: int, pad_id: int, dim: int = 256, depth: int = 3, heads: int = 4) -> None:
        super().__init__()
        self.pad_id, self.dim = pad_id, dim
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.register_buffer("pos_embed", sincos_pos_embed_1d(1024, dim), persistent=False)
        self.drop = nn.Dropout(0.1)
        self.transformer = nn.Transformer(dim, heads, depth, depth, 4 * dim, 0.1, activation="relu", batch_first=True)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.drop(self.embed(tokens) * math.sqrt(self.dim) + self.pos_embed[: tokens.shape[1]])

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1], device=src.device)
        src_pad = src == self.pad_id
        out = self.transformer(
            self._embed(src),
            self._embed(tgt_in),
            tgt_mask=causal,
            tgt_is_causal=True,
            src_key_padding_mask=src_pad,
            memory_key_padding_mask=src_pad,
        )
        return F.linear(out, self.embed.weight)


def bench_training(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    vocab, pad, b, s, t = 8000, 0, args.train_batch, args.train_len, args.train_len
    src = torch.randint(1, vocab, (b, s), device=device)
    tgt = torch.randint(1, vocab, (b, t + 1), device=device)
    src[: b // 2, -s // 4 :] = pad  # some padding, as in a length-bucketed batch
    tgt[: b // 2, -t // 4 :] = pad
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    tokens = int((tgt_out != pad).sum())
    models = {
        "ours": create_model("transformer_small", vocab_size=vocab, pad_id=pad).to(device).train(),
        "torch": TorchTransformer(vocab_size=vocab, pad_id=pad).to(device).train(),
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    steps = {}
    for key, model in models.items():
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

        def step(model=model, optimizer=optimizer):
            logits = model(src, tgt_in)
            loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=pad, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[key] = step
        step()  # warm-up
    times = {key: [] for key in steps}
    for repeat in range(args.repeats):
        for key in list(steps) if repeat % 2 == 0 else list(steps)[::-1]:
            times[key].append(seconds(steps[key], device))
    median = {key: statistics.median(v) for key, v in times.items()}
    print(f"\nTraining step, batch {b} x {s} source / {t} target tokens ({tokens} non-pad), vocab {vocab}, {device}")
    for key in ("ours", "torch"):
        print(
            f"  {key:5s} ({counts[key] / 1e6:.2f}M params): {tokens / median[key]:9.0f} target tokens/s "
            f"({median[key] * 1e3:.0f} ms/step, median of {args.repeats})"
        )
    paired = statistics.median(t / o for o, t in zip(times["ours"], times["torch"]))
    print(
        f"  tokens/s ours / torch.nn.Transformer = {median['torch'] / median['ours']:.2f} "
        f"(median of paired ratios: {paired:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=8, help="attention benchmark batch")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-len", type=int, default=64)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    bench_attention(args, device)
    if not args.skip_train:
        bench_training(args, device)


if __name__ == "__main__":
    main()
