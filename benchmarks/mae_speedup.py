"""MAE's encoder skips the masked patches: the training speed-up of He et al. 2022, Table 2c.

    python benchmarks/mae_speedup.py [--models mae_vit_base_patch16 mae_vit_large_patch16]
                                     [--batch-size 16 --repeats 5 --warmup 3 --mask-ratio 0.75]
                                     [--device cpu|cuda]

Two pre-training steps (forward, loss on the masked patches, backward) of the same model, same
images and same masks at mask ratio 0.75:

- ours: the encoder runs on the visible 25% of the patches (plus the class token), and the decoder
  puts the mask tokens in (Sec. 3);
- with [M] in the encoder (Table 2c, "encoder w/ [M]"): every patch goes through the encoder,
  the masked ones replaced by a learned mask token of the encoder's width; the same decoder runs
  on its output, so the two differ only in what the encoder sees.

Printed per model: the FLOPs of each step counted by ``torch.utils.flop_counter.FlopCounterMode``
(matmuls, convolutions and attention, forward and backward), their ratio, the wall-clock time of
each step (median of ``--repeats`` alternating measurements after ``--warmup``), the wall-clock
speed-up, and its fraction of the FLOP ratio. Goals: speed-up >= 0.9 x the FLOP ratio, and >= 3x for
ViT-L (the paper's Table 2c: 3.3x fewer FLOPs for ViT-L; its Table 3 speed-ups 2.8-4.1x).

Small batches understate the speed-up: reading the weights and writing their gradients costs
the same in both steps whatever the encoder sees (about 4 GB of memory traffic per ViT-L step), so
the ratio climbs towards the FLOP ratio as the batch grows: on 2 CPU cores, ViT-L reaches 2.79x at
batch 4 and 3.11x (0.96 of its FLOP ratio 3.24x) at batch 16, hence the default of 16.

The optimizer update is left out of both steps: it is the same elementwise pass over the weights
whatever the encoder sees, so it would add the same time to both (at batch 2 on a CPU, more than
the forward pass of the masked step itself), whereas at the paper's batch of 4096 it is negligible.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from research.models import create_model
from research.models.mae import MaskedAutoencoderViT, random_masking
from research.tasks.mae import masked_patch_mse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mae_vit_base_patch16", "mae_vit_large_patch16"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (the allocator settles)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


class EncoderWithMaskTokens(nn.Module):
    """Table 2c's "encoder w/ [M]": the same MAE, but its encoder sees all patches, masked ones as [M]."""

    def __init__(self, mae: MaskedAutoencoderViT) -> None:
        super().__init__()
        self.mae = mae
        self.mask_token = nn.Parameter(torch.zeros(1, 1, mae.encoder.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, imgs: Tensor, mask_ratio: float, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Shape: (B, C, H, W) -> pred (B, L, P*P*C), mask (B, L)."""
        enc, mae = self.mae.encoder, self.mae
        x = enc.patch_embed(imgs)
        _, mask, _ = random_masking(x, mask_ratio, noise)  # the same mask as the MAE step
        x = torch.where(mask[..., None].bool(), self.mask_token.to(x.dtype), x) + enc.pos_embed[:, 1:]
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        latent = enc.norm(enc.blocks(torch.cat([cls, x], dim=1)))  # (B, 1 + L, D): nothing to unshuffle
        return mae.decode_tokens(mae.decoder_embed(latent)), mask


def make_steps(mae: MaskedAutoencoderViT, imgs: Tensor, noise: Tensor, mask_ratio: float):
    with_tokens = EncoderWithMaskTokens(mae).to(imgs.device)
    target = mae.patchify(imgs)

    def ours() -> None:
        pred, mask = mae(imgs, mask_ratio, noise)
        masked_patch_mse(pred, target, mask).backward()
        mae.zero_grad(set_to_none=True)

    def encoder_sees_mask_tokens() -> None:
        pred, mask = with_tokens(imgs, mask_ratio, noise)
        masked_patch_mse(pred, target, mask).backward()
        with_tokens.zero_grad(set_to_none=True)

    return {"ours": ours, "encoder w/ [M]": encoder_sees_mask_tokens}


def flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def seconds(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    print(
        f"MAE pre-training step (forward + masked-patch MSE + backward), mask ratio {args.mask_ratio}, "
        f"batch {args.batch_size} at {args.img_size}px on {device} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}"
    )
    for name in args.models:
        torch.manual_seed(0)
        mae = create_model(name, img_size=args.img_size, mask_ratio=args.mask_ratio).to(device)
        imgs = torch.randn(args.batch_size, mae.in_chans, args.img_size, args.img_size, device=device)
        noise = torch.rand(args.batch_size, mae.num_patches, device=device)
        steps = make_steps(mae, imgs, noise, args.mask_ratio)
        counted = {variant: flops(step) for variant, step in steps.items()}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times = {variant: [] for variant in steps}
        for repeat in range(args.repeats):
            order = list(steps) if repeat % 2 == 0 else list(steps)[::-1]  # alternate who goes first
            for variant in order:
                times[variant].append(seconds(steps[variant], device))
        median = {variant: statistics.median(t) for variant, t in times.items()}
        flop_ratio = counted["encoder w/ [M]"] / counted["ours"]
        speedup = median["encoder w/ [M]"] / median["ours"]
        print(f"{name}:")
        for variant in steps:
            spread = ", ".join(f"{t * 1e3:.0f}" for t in times[variant])
            print(
                f"  {variant:>15}: {counted[variant] / 1e9:8.1f} GFLOPs, {median[variant] * 1e3:8.1f} ms/step "
                f"(median of {args.repeats}: {spread})"
            )
        print(
            f"  FLOP ratio {flop_ratio:.2f}x, wall-clock speed-up {speedup:.2f}x "
            f"= {speedup / flop_ratio:.2f} of the FLOP ratio"
        )
        del mae, steps


if __name__ == "__main__":
    main()
