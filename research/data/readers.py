"""Readers for the on-disk formats of the classic image datasets, straight into numpy arrays.

- idx: the big-endian format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/),
  plain or gzipped; :func:`write_idx` writes it, for stand-in datasets.
- CIFAR pickles: the "python version" batches of CIFAR-10/100
  (https://www.cs.toronto.edu/~kriz/cifar.html).
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

# idx type codes (the third byte of the magic number) we read; MNIST-style files use only 0x08.
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0C: np.dtype(">i4")}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (``.gz`` or not) into an array of the shape its header declares.

    Raises:
        ValueError: the file is not idx, uses an unsupported element type, or is truncated.

    """
    path = Path(path)
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file (its magic number must start with two zero bytes)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: idx element type 0x{type_code:02x} is not supported")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path} holds {len(data)} bytes but its header {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as a uint8 idx file (gzipped if the name ends in ``.gz``), the inverse of :func:`read_idx`.

    The file appears at once (written beside it, then renamed), so a concurrent reader never sees
    half of it. Used for stand-in datasets (quick reproduce runs, tests).
    """
    path, array = Path(path), np.asarray(array)
    data = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    partial.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    partial.replace(path)
    return path


def read_cifar_batches(paths: list[str | Path], labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate CIFAR python-version batch files.

    Args:
        paths: batch files (plain or ``.gz``), each a pickled dict with ``data`` (N, 3072) uint8
            whose rows are CHW images.
        labels_key: ``labels`` for CIFAR-10, ``fine_labels`` for CIFAR-100.

    Returns:
        Images (N, 3, 32, 32) uint8 and labels (N,) int64.

    """
    images, labels = [], []
    for path in paths:
        with _open(Path(path)) as f:
            # The batches were pickled by Python 2; latin1 maps their byte strings 1:1.
            batch = pickle.load(f, encoding="latin1")
        if "data" not in batch or labels_key not in batch:
            raise ValueError(
                f"{path} is not a CIFAR batch: keys {sorted(batch)}, expected 'data' and {labels_key!r}"
            )
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[labels_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)
