"""Train-step time of our swin_tiny_patch4_window7_224 against timm's, with identical weights and inputs.

    python benchmarks/swin_vs_timm.py [--batch-size 4 --steps 1 --repeats 9 --img-size 224]
                                      [--device cpu|cuda] [--amp]

Prints both medians and ours / timm (<= 1.0: at least timm's speed); see ``_against_timm.py``.
The two differ only in attention: timm's Swin computes q k^T, adds the relative position bias and
the shift mask to the scores and applies softmax itself (its fused path is off by default), ours
hands the same bias and mask to ``F.scaled_dot_product_attention`` through the shared ``Attention``.
"""

from _against_timm import compare

if __name__ == "__main__":
    compare("swin_tiny_patch4_window7_224", description=__doc__.splitlines()[0], batch_size=4)
