"""Load a checkpoint file safely, or stop with ``not a checkpoint: <path> (<why>)``.

Every checkpoint a user names (``--ckpt_path``, a distillation teacher, a ``pretrained`` path, the
file given to the attack and quantize commands) is read through :func:`load_checkpoint`:
with ``weights_only=True`` (no code in the file runs), and with a message that says what the file
is instead of torch's (which, for a file that is not a checkpoint at all, suggests an unsafe load).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from research.errors import UserError


def _why_unreadable(err: Exception) -> str:
    text = str(err)
    if isinstance(err, EOFError):
        return "it ends early: a truncated file"
    if "Unsupported global" in text or "GLOBAL" in text:
        name = text.split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in text else "a Python object"
        return f"it holds {name}, which a safe load (weights_only=True) does not run; load only tensors and plain data"
    if isinstance(err, pickle.UnpicklingError):
        return "neither the zip archive torch.save writes nor a pickle of tensors"
    if "zip archive" in text or "central directory" in text:
        return "a damaged or truncated zip archive; torch.save writes a complete one"
    return f"{type(err).__name__}: {text.splitlines()[0][:120] if text else 'unreadable'}"


def writer_of(path: str | Path) -> str:
    """The command that writes the run checkpoint ``path``, as far as the path tells.

    ``python -m research fit --config configs/<experiment>.yaml`` writes
    ``checkpoints/<experiment>/last.ckpt`` (and ``best-*.ckpt``), so a path under ``checkpoints/``
    names its config; other paths get the general form.
    """
    parts = Path(path).parts
    if "checkpoints" in parts[:-1]:
        experiment = "/".join(parts[parts.index("checkpoints") + 1 : -1])
        if experiment:
            return f"python -m research fit --config configs/{experiment}.yaml"
    return "python -m research fit --config CONFIG (it writes checkpoints/<family>/<name>/last.ckpt)"


def missing_checkpoint(path: str | Path, what: str = "checkpoint") -> FileNotFoundError:
    """The error for a checkpoint that is not there: the path, and the command that makes it."""
    path = Path(path)
    if path.is_dir():
        return FileNotFoundError(f"{what} {path} is a folder; give the .ckpt file in it (e.g. {path / 'last.ckpt'})")
    return FileNotFoundError(
        f"no {what} at {path}: train it first with {writer_of(path)}, or fix the path"
    )


def load_checkpoint(path: str | Path, *, what: str = "checkpoint", lightning: bool = False,
                    mmap: bool = False) -> dict[str, Any]:
    """The mapping in a checkpoint file (a Lightning checkpoint or a state dict), loaded on the CPU.

    Args:
        path: the file.
        what: how a message names the file (``"teacher checkpoint"``, ``"--ckpt_path"``).
        lightning: require a Lightning checkpoint (with a ``state_dict``), not a bare state dict.
        mmap: memory-map the tensors (cheap for a large file that is only inspected).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names the command that writes it).
        UserError: the file is empty, truncated, damaged, not a torch file, holds something other than
            a mapping (a bare tensor), or (with ``lightning``) a mapping without a ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_checkpoint(path, what)
    if path.stat().st_size == 0:
        raise UserError(f"not a checkpoint: {path} (the file is empty, 0 bytes: was its save interrupted?)")
    zipped = zipfile.is_zipfile(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, OSError) as err:
        raise UserError(f"not a checkpoint: {path} ({_why_unreadable(err)})") from None
    if not isinstance(content, dict):
        raise UserError(
            f"not a checkpoint: {path} (it holds a {type(content).__name__}, not a mapping of names to tensors "
            "such as a checkpoint of python -m research fit or a state dict)"
        )
    if lightning and "state_dict" not in content:
        raise UserError(
            f"not a checkpoint: {path} (a mapping without 'state_dict', such as a bare state dict: give a "
            "checkpoint written by python -m research fit)"
        )
    return content
