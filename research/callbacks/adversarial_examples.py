"""A picture of what the attack does: clean | perturbation magnified | adversarial, with predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
from einops import rearrange
from PIL import Image, ImageDraw
from torch import Tensor

from research.attacks import fgsm, pgd
from research.callbacks._batch import EvaluationSubsetCallback, Stage, check_at_least_one
from research.callbacks._pictures import log_picture, run_folder

OWNER = "AdversarialExamples"
MARGIN = 2  # pixels between cells and around the picture
TEXT_HEIGHT = 14  # the column titles above, and each row's captions under its cells
COLUMNS = ("clean", "perturbation", "adversarial")


def picture_size(num_examples: int, cell_size: int) -> tuple[int, int]:
    """(width, height) in pixels of the picture of ``num_examples`` rows."""
    width = len(COLUMNS) * cell_size + (len(COLUMNS) + 1) * MARGIN
    height = TEXT_HEIGHT + num_examples * (cell_size + TEXT_HEIGHT) + (num_examples + 1) * MARGIN
    return width, height


def draw_examples(
    clean: Tensor,
    adversarial: Tensor,
    labels: Tensor,
    clean_pred: Tensor,
    adv_pred: Tensor,
    *,
    class_names: list[str],
    cell_size: int,
) -> Image.Image:
    """One row per example: clean | perturbation magnified | adversarial, each with a caption.

    The perturbation is shown as ``0.5 + delta / (2 * max|delta|)`` per example (grey is no
    change) and its caption gives the magnification. A caption is green when the prediction is
    right, red when it is wrong.

    Args:
        clean: (N, C, H, W) images in [0, 1], C = 1 or 3.
        adversarial: (N, C, H, W) their adversarial versions.
        labels: (N,) true classes.
        clean_pred: (N,) predictions on ``clean``.
        adv_pred: (N,) predictions on ``adversarial``.
        class_names: a name per class index.
        cell_size: side of each cell; images are scaled to it (nearest neighbour: pixels stay visible).

    Returns:
        An RGB image of :func:`picture_size` ``(N, cell_size)``.
    """
    delta = (adversarial - clean).float()
    scale = delta.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12)  # (N,)
    magnified = 0.5 + delta / (2 * scale.view(-1, 1, 1, 1))
    picture = Image.new("RGB", picture_size(len(clean), cell_size), "white")
    draw = ImageDraw.Draw(picture)
    for col, title in enumerate(COLUMNS):
        draw.text((MARGIN + col * (cell_size + MARGIN), 1), title, fill="black")
    for row in range(len(clean)):
        top = TEXT_HEIGHT + MARGIN + row * (cell_size + TEXT_HEIGHT + MARGIN)
        label = int(labels[row])
        captions = (
            (f"{class_names[int(clean_pred[row])]}", bool(clean_pred[row] == label)),
            (f"x{1 / (2 * scale[row].item()):.3g}", None),
            (f"{class_names[int(adv_pred[row])]}", bool(adv_pred[row] == label)),
        )
        for col, (image, (caption, right)) in enumerate(
            zip((clean[row], magnified[row], adversarial[row]), captions)
        ):
            left = MARGIN + col * (cell_size + MARGIN)
            picture.paste(_to_pil(image).resize((cell_size, cell_size), Image.Resampling.NEAREST), (left, top))
            color = "black" if right is None else ("green" if right else "red")
            draw.text((left, top + cell_size + 1), caption, fill=color)
    return picture


def _to_pil(image: Tensor) -> Image.Image:
    """(C, H, W) in [0, 1], C = 1 or 3 -> an RGB PIL image."""
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    pixels = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(rearrange(pixels, "c h w -> h w c").cpu().numpy(), mode="RGB")


class AdversarialExamples(EvaluationSubsetCallback):
    """Save a picture of adversarial examples as PNG in the run folder, and log it to wandb.

    At the end of every ``every_n_epochs``-th validation epoch and of every test,
    ``num_examples`` examples of the validation (test) loader, drawn at random once (seeded,
    :class:`~research.callbacks._batch.FixedSubset`) and the same every time, are attacked in
    eval mode and drawn by :func:`draw_examples`: one row per example, clean | perturbation
    magnified | adversarial, captioned with the predictions (green right, red wrong). The PNG
    goes to ``<run folder>/adversarial_examples/<stage>_epoch=<epoch>.png``; the run folder is
    ``dirpath`` if given, else the first CSV or TensorBoard logger's version folder, else
    ``trainer.default_root_dir``. Every wandb logger receives it as the image
    ``<stage>/adversarial_examples``. Under DDP only global rank 0 attacks and draws.

    Args:
        eps: radius of the attack in pixel units.
        attack: "pgd" or "fgsm".
        steps: PGD iterations.
        step_size: PGD step; default 2.5 * eps / steps.
        norm: "linf" or "l2" (PGD only; FGSM is L-inf).
        num_examples: rows of the picture.
        cell_size: side of each image cell in pixels.
        every_n_epochs: draw at every n-th validation epoch.
        dirpath: folder for the pictures' ``adversarial_examples/`` folder; default the run folder.

    Raises:
        ValueError: an option out of range; during the run, a task whose batches are not
            (images in [0, 1], integer labels).
    """

    owner = OWNER

    def __init__(
        self,
        *,
        eps: float,
        attack: Literal["pgd", "fgsm"] = "pgd",
        steps: int = 10,
        step_size: float | None = None,
        norm: Literal["linf", "l2"] = "linf",
        num_examples: int = 8,
        cell_size: int = 96,
        every_n_epochs: int = 1,
        dirpath: str | Path | None = None,
    ) -> None:
        if not eps > 0:
            raise ValueError(f"{OWNER}: eps must be > 0 (pixel units, images in [0, 1]), got {eps}")
        if attack not in ("pgd", "fgsm"):
            raise ValueError(f"{OWNER}: unknown attack {attack!r}; choose 'pgd' or 'fgsm'")
        if norm not in ("linf", "l2") or (attack == "fgsm" and norm != "linf"):
            raise ValueError(f"{OWNER}: norm must be 'linf' or 'l2' ('linf' for fgsm), got {norm!r}")
        check_at_least_one(OWNER, steps=steps, num_examples=num_examples, cell_size=cell_size,
                           every_n_epochs=every_n_epochs)
        if step_size is not None and not step_size > 0:
            raise ValueError(f"{OWNER}: step_size must be > 0, got {step_size}")
        super().__init__(every_n_epochs=every_n_epochs, rank_zero_only=True)
        self.eps, self.attack, self.steps, self.norm = eps, attack, steps, norm
        self.step_size = 2.5 * eps / steps if step_size is None else step_size
        self.num_examples, self.cell_size = num_examples, cell_size
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.last_path: Path | None = None

    def subset_size(self, trainer: L.Trainer) -> int:
        return self.num_examples

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Stage) -> None:
        """Attack the kept examples, draw them, save the PNG and send it to wandb."""
        x, y = self._subsets[stage].tensors()
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        plugin = trainer.precision_plugin
        with plugin.val_step_context() if stage == "val" else plugin.test_step_context():
            if self.attack == "fgsm":
                x_adv = fgsm(pl_module, x, y, eps=self.eps)
            else:
                x_adv = pgd(pl_module, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps, norm=self.norm)
            with torch.no_grad():
                clean_pred, adv_pred = pl_module(x).argmax(-1), pl_module(x_adv).argmax(-1)
        names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule is not None else None
        if names is None:
            names = [str(i) for i in range(int(max(clean_pred.max(), adv_pred.max(), y.max())) + 1)]
        picture = draw_examples(x, x_adv, y, clean_pred, adv_pred, class_names=list(names), cell_size=self.cell_size)
        folder = run_folder(trainer, self.dirpath) / "adversarial_examples"
        path = folder / f"{stage}_epoch={trainer.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
        self.last_path = path
        log_picture(trainer, path, key=f"{stage}/adversarial_examples")
