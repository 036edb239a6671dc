"""Train-step time of our vit_small_patch16_224 against timm's, with identical weights and inputs.

    python benchmarks/vit_vs_timm.py [--batch-size 8 --steps 1 --repeats 9 --img-size 224]
                                     [--device cpu|cuda] [--amp]

Prints both medians and ours / timm (<= 1.0: at least timm's speed); see ``_against_timm.py``.
"""

from _against_timm import compare

if __name__ == "__main__":
    compare("vit_small_patch16_224", description=__doc__.splitlines()[0], batch_size=8)
