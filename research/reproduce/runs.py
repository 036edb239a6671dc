"""Training runs behind the tables: a config of the package's configs/ plus overrides, trained as ``research fit``.

:func:`fit_run` trains and tests one run and remembers its checkpoints and wall time;
:func:`fit_and_test` returns just its metrics; :func:`attack_checkpoint` evaluates a run's
checkpoint under the attacks of ``python -m research attack`` (FGSM, PGD, AutoAttack, ...).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import unittest.mock
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from research.callbacks.checkpoint import LAST
from research.data.readers import write_idx
from research.reproduce.table import Measured

# configs/, shipped in the package as research/configs (in the source tree a link to the top-level folder), so a
# table finds its configs from a checkout, an editable install or an installed wheel, whatever the working folder.
CONFIGS = resources.files("research") / "configs"
# --quick: a few steps of everything, so the whole pipeline (data, model, fit, test) runs in seconds.
QUICK = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"]
# Where the tables look for data that is not shipped (a torchvision root, or a folder of the idx files).
DATA_ENV = "RESEARCH_DATA"
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                  "t10k-labels-idx1-ubyte")


class Run(NamedTuple):
    """A finished training run: its metrics, checkpoints and wall time."""

    metrics: dict[str, float]
    best: str  # the checkpoint with the best monitored metric ("" if none was written)
    last: str  # the checkpoint at the end of training ("" if none was written)
    seconds: float  # wall time of fit and test
    cpu_seconds: float  # CPU time of this process over fit and test, all threads: fair on a shared machine


@functools.cache
def fit_run(config: str, overrides: tuple[str, ...] = (), *, quick: bool = False) -> Run:
    """Train ``config`` (see :func:`config_file`) with shell-style ``overrides``, test the best checkpoint.

    Memoised within a process, so rows that share a run (a mean and a difference) train it once.
    """
    from research.commands.fit import main  # the CLI imports every task; only runs need it

    tag = hashlib.sha1(json.dumps([config, overrides, quick]).encode()).hexdigest()[:8]
    options = [*overrides, "--experiment", f"reproduce/{PurePosixPath(config).stem}-{tag}", "--trainer.logger", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    start, cpu_start = time.perf_counter(), time.process_time()
    # The run's arguments are all in ``options``; the reproduce command's own (the table's name, --out) stay in
    # sys.argv, where LightningCLI would warn that it got both. Hide them for the run.
    with config_file(config) as path, unittest.mock.patch.object(sys, "argv", sys.argv[:1]):
        cli = main(["fit", "--config", str(path), *options, *(QUICK if quick else [])])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    checkpoint = cli.trainer.checkpoint_callback
    # last.ckpt holds the final step of this run (research.callbacks.ModelCheckpoint, tested)
    last = Path(checkpoint.dirpath) / LAST if getattr(checkpoint, "dirpath", None) else None
    return Run(
        metrics={k: float(v) for k, v in cli.trainer.callback_metrics.items()},
        best=str(getattr(checkpoint, "best_model_path", "") or ""),
        last=str(last) if last is not None and last.is_file() else "",
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )


@contextmanager
def config_file(config: str) -> Iterator[Path]:
    """The file of ``config``, a path relative to the package's configs/ (``"reproduce/mnist_wong_fast.yaml"``).

    A context manager, as :func:`importlib.resources.as_file` is: a package imported from a zip
    file has no file on disk until this extracts one.

    Raises:
        FileNotFoundError: no such config in the package.
    """
    source = CONFIGS / config
    if not source.is_file():
        raise FileNotFoundError(f"no config {config!r} in {CONFIGS}: name a file under configs/, as the tables do")
    with resources.as_file(source) as path:
        yield path


def config_key(config: str) -> str:
    """``config`` and a hash of its text: a cache key that changes when the config file is edited."""
    path = CONFIGS / config
    text = path.read_bytes() if path.is_file() else b""
    return f"{config}@{hashlib.sha1(text).hexdigest()[:8]}"


def fit_and_test(config: str, overrides: tuple[str, ...] = (), *, quick: bool = False) -> dict[str, float]:
    """Train ``config`` with shell-style ``overrides``, test the best checkpoint, return the metrics."""
    return fit_run(config, overrides, quick=quick).metrics


def model_override(config: str, **changes: object) -> tuple[str, str]:
    """``("--model.init_args.model", JSON)``: the task's ``model`` dict of ``config`` with ``changes`` applied.

    A whole dict, because the command line's ``--model.init_args.model.KEY VALUE`` reaches a dict-typed
    argument as the string "VALUE" ("false" is truthy); JSON keeps booleans and numbers typed.

    Raises:
        ValueError: the config's task has no ``model`` dict to change.
    """
    import yaml

    with config_file(config) as path:
        model = yaml.safe_load(path.read_text()).get("model", {}).get("init_args", {}).get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{config} gives its task no model dict ({model!r}) to change with {changes}")
    return "--model.init_args.model", json.dumps({**model, **changes})


class EpochRecord(Callback):
    """Write one reading per training epoch beside the run's checkpoints, so a table reads it without a logger.

    A subclass names the file (:attr:`FILE`) and says what an epoch's reading is (:meth:`reading`); the
    record is a JSON list of ``{"epoch": ..., **reading}``, rewritten after every epoch by rank 0 (atomically:
    a reader never sees half a file) and read back with :meth:`read`.
    """

    FILE = "epochs.json"

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def reading(self, trainer: L.Trainer) -> dict:
        """What to record of the epoch that just ended."""
        raise NotImplementedError

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append({"epoch": trainer.current_epoch, **self.reading(trainer)})
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        if folder and trainer.is_global_zero:
            path = Path(folder) / self.FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.epochs, indent=1))
            tmp.replace(path)

    @classmethod
    def read(cls, checkpoint: str, option: str) -> list[dict]:
        """The record beside ``checkpoint``.

        Raises:
            FileNotFoundError: the run had no such record; ``option`` is the command-line argument that adds it.
        """
        path = Path(checkpoint).parent / cls.FILE
        if not checkpoint or not path.is_file():
            raise FileNotFoundError(f"no {cls.FILE} beside {checkpoint!r}: train with {option}")
        return json.loads(path.read_text())


def over_seeds(config: str, overrides: tuple[str, ...], metric: str, seeds: int, *, quick: bool) -> Measured:
    """Mean and standard deviation of ``metric`` (x100 for accuracies) over ``seeds`` runs (quick: one, no spread)."""
    values = [
        100 * fit_and_test(config, (*overrides, "--seed_everything", str(seed)), quick=quick)[metric]
        for seed in range(1 if quick else seeds)
    ]
    return Measured(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def attack_checkpoint(
    config: str,
    checkpoint: str,
    overrides: Sequence[str] = (),
    *,
    attacks: Sequence[str],
    eps: float,
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    num_samples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy (%) of a checkpoint on clean test examples and under each attack at ``eps``.

    The task and data come from ``config`` (see :func:`config_file`) with ``overrides`` as in
    :func:`research.commands.load.load_run`; ``num_samples`` test examples are drawn with ``seed``, the same
    ones for every attack, and an example counts as robust only if it is also classified
    correctly clean and no restart of the attack fools it (see :mod:`research.attacks.evaluation`).
    ``attacks`` are names in :data:`research.attacks.registry.ATTACKS`: ``"fgsm"``, ``"pgd"`` (which reads
    ``steps``, ``step_size`` and ``restarts``), ``"apgd"``, ``"autoattack"`` (the standard ensemble,
    worst case per example: the robust figure; FGSM and PGD give upper bounds on it), ...

    Returns:
        ``{"clean": ..., "fgsm": ..., "autoattack": ...}``: one key per attack asked for, in percent.
    """
    import torch

    from research.attacks.evaluation import robust_accuracy, sample_loader
    from research.commands.load import load_run

    if not checkpoint:
        raise FileNotFoundError(f"the run of {config} wrote no checkpoint to attack")
    with config_file(config) as path:
        run = load_run(path, checkpoint, overrides)
    loader = sample_loader(run.datamodule, split="test", num_samples=num_samples, seed=seed)
    torch.manual_seed(seed)  # the random starts
    rows = robust_accuracy(run.task, loader, attacks=attacks, eps=[eps], steps=steps, step_size=step_size,
                           restarts=restarts)
    return {("clean" if r["attack"] == "none" else r["attack"]): 100 * r["accuracy"] for r in rows}


def fashion_mnist_root(quick: bool) -> Path:
    """A torchvision-layout root holding Fashion-MNIST (``ROOT/FashionMNIST/raw/``), from ``$RESEARCH_DATA``.

    ``$RESEARCH_DATA`` may be such a root, or a folder holding the four idx files themselves
    (``.gz`` or not); the latter gets a root of links under the temporary folder. With ``quick``
    and no files, a stand-in of random images in the same format is written instead: quick
    numbers are not comparable anyway, and the test suite must run on a fresh checkout.

    Raises:
        FileNotFoundError: not ``quick`` and the files are not where ``$RESEARCH_DATA`` points.
    """
    given = os.environ.get(DATA_ENV)
    if given:
        root = Path(given).expanduser()
        if _has_fashion(root / "FashionMNIST" / "raw"):
            return root
        if _has_fashion(root):
            digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
            linked = Path(tempfile.gettempdir()) / f"research-fashion-{digest}"
            raw = linked / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for source in root.iterdir():
                if source.name.split(".")[0] in _FASHION_FILES and not (raw / source.name).exists():
                    (raw / source.name).symlink_to(source.resolve())
            return linked
    if quick:
        return _stand_in_fashion()
    raise FileNotFoundError(
        f"Fashion-MNIST not found{f' under {given}' if given else ''}: set {DATA_ENV}=DIR where DIR/FashionMNIST/raw/ "
        f"(torchvision's layout) or DIR itself holds {', '.join(_FASHION_FILES)} (.gz allowed)"
    )


def quick_data(quick: bool, *, batch_size: int, verses: bool = False, references: bool = False) -> tuple[str, ...]:
    """A quick run's data overrides: steps of ``batch_size`` examples; empty for a full run (the config's data).

    A quick run proves that a table's rows are measured, not what they measure, so its steps are small and,
    for the Bible's text configs, it reads every 16th verse (``verses``: :func:`quick_bible`) with their
    labels (``references``: :func:`quick_bible_references`).
    """
    if not quick:
        return ()
    options = ("--data.init_args.batch_size", str(batch_size))
    if verses:
        options += ("--data.init_args.corpus", str(quick_bible()))
    if references:
        options += ("--data.init_args.references", str(quick_bible_references()))
    return options


def quick_bible(every: int = 16) -> Path:
    """Every ``every``-th verse pair of the embedded English-Spanish Bible as a corpus file, for quick text runs.

    A quick run proves that a table's rows are measured, not what they measure: tokenizing the whole Bible (31,077
    pairs) took most of each quick translation run's seconds, a sixteenth of it (all its books) a fraction of one.
    """
    from research.data.text import EMBEDDED_BIBLE

    return _every_line(EMBEDDED_BIBLE, every, header=False)


def quick_bible_references(every: int = 16) -> Path:
    """The verse references (labels) of :func:`quick_bible`'s lines, for quick runs of the verse classifier."""
    from research.data.bible_verses import EMBEDDED_REFERENCES

    return _every_line(EMBEDDED_REFERENCES, every, header=True)


def _every_line(source: Path, every: int, *, header: bool) -> Path:
    """A plain copy of every ``every``-th line of the gzipped ``source`` (after its header, kept, if ``header``)."""
    import gzip

    data = source.read_bytes()
    digest = hashlib.sha1(data + str(every).encode()).hexdigest()[:8]
    path = Path(tempfile.gettempdir()) / f"research-quick-{source.name.split('.')[0]}-{digest}.tsv"
    if not path.is_file():
        lines = gzip.decompress(data).decode("utf-8").splitlines()
        kept = lines[:1] + lines[1::every] if header else lines[::every]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


def _has_fashion(folder: Path) -> bool:
    return all((folder / name).is_file() or (folder / f"{name}.gz").is_file() for name in _FASHION_FILES)


def _stand_in_fashion() -> Path:
    """Random 28x28 images with labels 0-9 in Fashion-MNIST's idx files: 600 train, 200 test."""
    root = Path(tempfile.gettempdir()) / "research-fashion-stand-in"
    raw = root / "FashionMNIST" / "raw"
    if _has_fashion(raw):
        return root
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 600), ("t10k", 200)):
        images, labels = rng.integers(0, 256, (count, 28, 28)), np.arange(count) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            write_idx(raw / f"{split}-{kind}-ubyte.gz", array)  # atomic: a concurrent reader never sees half a file
    return root
