"""FID of a DCGAN on the embedded MNIST digits, with an MNIST classifier of ours as the feature extractor.

Inception-v3 weights cannot be downloaded here, so the features are the penultimate layer of a
classifier trained by this project (research.metrics.fid); the values are on that extractor's
scale, so they are printed next to the floor and the ceiling measured with the same extractor and
the same number of images. Every row compares a set with the 1,000 held-out test digits:

* real vs real: the 1,000 validation digits (what a perfect generator would score at this size),
* real vs samples: 1,000 samples of each GAN checkpoint given (and of an untrained generator),
* real vs noise: 1,000 images of uniform noise in [0, 1].

Usage (after training the classifier and the GAN, see configs/gan/mnist_dcgan.yaml):
    python benchmarks/gan_fid.py --extractor checkpoints/cnn/mnist_five_layer_cnn/last.ckpt \
        --gan checkpoints/gan/mnist_dcgan/last.ckpt
"""

from __future__ import annotations

import argparse

import torch

from research.data import EmbeddedMNISTDataModule
from research.metrics import ClassifierFeatures, classifier_fid
from research.tasks import GAN


def split_images(datamodule: EmbeddedMNISTDataModule, split: str) -> torch.Tensor:
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    return torch.cat([images for images, _ in loader])


def fid(features: ClassifierFeatures, real: torch.Tensor, other: torch.Tensor) -> float:
    metric = classifier_fid(features)
    for chunk in real.split(500):
        metric.update(chunk, real=True)
    for chunk in other.split(500):
        metric.update(chunk, real=False)
    return metric.compute().item()


def samples(task: GAN, n: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, task.latent_dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([task.sample(chunk) for chunk in z.split(500)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extractor", required=True, help="ImageClassification checkpoint (e.g. five_layer_cnn)")
    parser.add_argument("--gan", nargs="*", default=[], help="GAN checkpoints to score")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples' noise and of the untrained generator")
    args = parser.parse_args()

    features = ClassifierFeatures.from_checkpoint(args.extractor)
    data = EmbeddedMNISTDataModule(batch_size=500)
    data.setup("fit")
    data.setup("test")
    real, other_real = split_images(data, "test"), split_images(data, "val")
    n = len(real)
    rows = [("real vs real (validation digits)", fid(features, real, other_real))]
    torch.manual_seed(args.seed)
    untrained = GAN().eval()
    untrained_fid = fid(features, real, samples(untrained, n, args.seed))
    rows.append(("real vs samples of an untrained DCGAN generator", untrained_fid))
    for path in args.gan:
        task = GAN.load_from_checkpoint(path, map_location="cpu", fid_extractor=None).eval()
        rows.append((f"real vs samples of {path}", fid(features, real, samples(task, n, args.seed))))
    noise = torch.rand(n, *real.shape[1:], generator=torch.Generator().manual_seed(args.seed))
    rows.append(("real vs uniform noise", fid(features, real, noise)))

    print(f"FID against the {n} test digits, {features.num_features}-d features of {args.extractor}\n")
    print("| compared sets | FID |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.2f} |")


if __name__ == "__main__":
    main()
