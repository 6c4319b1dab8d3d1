"""Tabular datasets: the table readers and the loaders of ``purchase-synth``, ``purchase100``,
``texas100`` and ``location``.

Each returns ``N x D`` rows, uint8 when the features are binary (see :mod:`mia.data.datasets` for what
loaders do).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mia.data.base import Dataset
from mia.data.datasets import register_dataset
from mia.data.files import fetch_archive, first_file, first_with, require, zero_based
from mia.errors import MiaError
from mia.registry import Param


# ---------------------------------------------------------------- readers


def _tabular_dataset(name: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> Dataset:
    """A tabular :class:`Dataset`: uint8 if the features are binary (4x smaller), else float32."""
    binary = x.size == 0 or (x.min() >= 0 and x.max() <= 1
                             and (np.issubdtype(x.dtype, np.integer) or np.array_equal(x, np.round(x))))
    x = x.astype(np.uint8 if binary else np.float32, copy=False)
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)),
                   num_classes, "tabular")


def _read_int_table(dataset: str, path: Path) -> np.ndarray:
    """A text table of small non-negative integers as uint8 (numpy's C parser, no per-line Python).

    Quoted fields are read too: the Location file ``bangkok`` quotes its labels (``"1",0,1,...``).
    A table of one-character fields (Texas100's 830 MB ``feats``) takes :func:`_read_digit_table`'s
    shortcut: 1-2 s instead of 6-7 s for that file, at the same peak memory.
    """
    if (table := _read_digit_table(path)) is not None:
        return table
    try:
        return np.loadtxt(path, delimiter=",", quotechar='"', dtype=np.uint8, ndmin=2)
    except (ValueError, OverflowError) as exc:
        raise MiaError(f"{dataset}: {path} is not comma-separated 0/1 integers ({exc}); "
                       "re-download the file") from None


def _read_digit_table(path: Path, chunk_rows: int = 4096) -> np.ndarray | None:
    """The table of ``path`` if every line is ``d,d,...,d\\n`` with one digit per field and the same count
    of fields, else None (the caller parses it in full).

    Such a file is a matrix of byte pairs, a digit and then a comma (or the newline that ends the line):
    read block by block as little-endian 16-bit words, the high bytes must be the separators and the low
    bytes are the digits, with no parser and no strided pass.
    """
    with open(path, "rb") as f:
        end = f.read(1 << 20).find(b"\n")  # the first line ends within the first MB
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            size += f.read(1) != b"\n"  # a last line without its newline
        # k one-digit fields are 2k bytes with the newline: it ends the first line at an odd index
        if end < 0 or end % 2 == 0 or size % (end + 1):
            return None
        fields, rows = (end + 1) // 2, size // (end + 1)
        table = np.empty((rows, fields), dtype=np.uint8)
        words = np.empty((min(chunk_rows, rows), fields), dtype="<u2")
        separators = np.full(fields, ord(","), dtype="<u2")
        separators[-1] = ord("\n")
        f.seek(0)
        for start in range(0, rows, chunk_rows):
            block = words[: min(chunk_rows, rows - start)]
            read = f.readinto(memoryview(block).cast("B"))
            if read == block.nbytes - 1 and start + len(block) == rows:  # the last line's missing newline
                block.reshape(-1)[-1] = (block.reshape(-1)[-1] & 0xFF) | ord("\n") << 8
            elif read != block.nbytes:  # the file changed under us
                return None
            if not ((block >> 8) == separators).all():
                return None
            digits = block.astype(np.uint8) - np.uint8(ord("0"))  # the low bytes; below '0' wraps above 9
            if (digits > 9).any():
                return None
            table[start:start + len(block)] = digits
        if f.read(1):  # it grew under us: rows past the measured size would be left out
            return None
    return table


# array names of the .npz copies MIA repositories publish: features/labels (Purchase100-Texas100-datasets,
# labels one-hot), x/y (MemGuard's data_complete.npz), X/Y and X/y (caches of the text files)
_NPZ_KEYS = (("features", "labels"), ("x", "y"), ("X", "Y"), ("X", "y"), ("data", "labels"))


def _read_npz(dataset: str, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and 0-based labels from an .npz of plain arrays (no pickles), whichever names it uses."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = next((pair for pair in _NPZ_KEYS if set(pair) <= set(data.files)), None)
            if keys is None:
                raise MiaError(f"{dataset}: {path} must hold arrays features and labels (or x and y), "
                               f"has {', '.join(data.files) or 'none'}")
            x, labels = data[keys[0]], data[keys[1]]
    except MiaError:
        raise
    except Exception as exc:  # not a zip, or object arrays (refused without pickle)
        raise MiaError(f"{dataset}: cannot read {path} ({exc}); it must be an .npz of plain arrays") from None
    if labels.ndim == 2 and labels.shape[1] == num_classes:  # one-hot rows (keras to_categorical)
        if not (np.isin(labels, (0, 1)).all() and (labels.sum(axis=1) == 1).all()):
            raise MiaError(f"{dataset}: {path} labels are N x {num_classes} but not one-hot rows")
        labels = labels.argmax(axis=1)
    y = zero_based(dataset, labels, num_classes, path, one_based=None)
    if x.ndim != 2 or len(x) != len(y):
        raise MiaError(f"{dataset}: {path} features must be N x D with one label per row; "
                       f"got features {x.shape}, labels {y.shape}")
    return x, y


def _label_first_table(dataset: str, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``label,f1,...`` with labels ``1..num_classes``: Shokri et al.'s ``dataset_purchase`` and ``bangkok``."""
    table = _read_int_table(dataset, path)
    if table.shape[1] < 2:
        raise MiaError(f"{dataset}: {path} rows must be 'label,f1,f2,...'; re-download it")
    return table[:, 1:], zero_based(dataset, table[:, 0], num_classes, path)


# ---------------------------------------------------------------- loaders


@register_dataset("purchase-synth", kind="tabular", default_model="fc",
                  description="generated Purchase100-like shopping baskets: sparse binary features, "
                              "overlapping classes; an fc model overfits it like the real one",
                  files="none (generated from the seed)",
                  params={"n": Param(int, 20000, "number of rows"),
                          "features": Param(int, 600, "binary features per row"),
                          "classes": Param(int, 100, "number of classes"),
                          "seed": Param(int, 0, "generator seed (same seed, same data)")})
def _load_purchase_synth(data_dir: Path, download: bool, n: int, features: int, classes: int,
                         seed: int) -> Dataset:
    x, y = purchase_synth(n, features, classes, seed)
    return _tabular_dataset("purchase-synth", x, y, classes)


def purchase_synth(n: int = 20000, features: int = 600, classes: int = 100,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Purchase100-like data: ``(x uint8 n x features in {0,1}, y int64 n)``.

    Real Purchase100 is shopping baskets clustered into 100 classes: sparse
    binary rows, classes that share popular products, and customers who buy
    more or less overall. The generator mimics each: classes fall into groups
    (1 per 10 classes) that share a set of popular items, each class adds its own
    favourite items, every item has a small base rate, and each row scales its
    class's purchase probabilities by a per-customer activity level. The mix is
    tuned so that the 600-1024-512-256-128 tanh net of the MIA literature,
    trained on 5000 rows, reaches train accuracy 1.0 and test accuracy about 0.7,
    the generalization gap that makes Purchase100 a membership-inference benchmark.
    """
    if n < 1 or features < 1 or classes < 2:
        raise MiaError(f"purchase-synth needs n >= 1, features >= 1 and classes >= 2, "
                       f"got n={n}, features={features}, classes={classes}")
    if seed < 0:
        raise MiaError(f"purchase-synth.seed must be non-negative, got {seed}")
    rng = np.random.default_rng(seed)
    groups = max(1, classes // 10)
    group_items = rng.random((groups, features)) < 0.10
    group_of = rng.integers(0, groups, classes)
    probs = np.where(group_items[group_of], 0.30, 0.05)
    own_items = rng.random((classes, features)) < 0.05
    probs = np.where(own_items, rng.uniform(0.2, 0.5, (classes, features)), probs).astype(np.float32)
    y = rng.choice(classes, n, p=rng.dirichlet(np.full(classes, 20.0)))  # mildly unequal class sizes
    x = np.empty((n, features), dtype=np.uint8)
    for start in range(0, n, 8192):  # chunks keep the float buffer small for large n
        rows = y[start:start + 8192]
        activity = rng.uniform(0.6, 1.4, (len(rows), 1)).astype(np.float32)
        x[start:start + len(rows)] = rng.random((len(rows), features), dtype=np.float32) < probs[rows] * activity
    return x, y.astype(np.int64)


# Shokri et al.'s archives: first the copy in their lab's GitHub repository, then the original address
_SHOKRI_MIRROR = "https://raw.githubusercontent.com/privacytrustlab/datasets/master/"
_SHOKRI_ORIGINAL = "https://www.comp.nus.edu.sg/~reza/files/"
_PURCHASE_URLS = (_SHOKRI_MIRROR + "dataset_purchase.tgz", _SHOKRI_ORIGINAL + "dataset_purchase.tgz")
_TEXAS_URLS = (_SHOKRI_MIRROR + "dataset_texas.tgz", _SHOKRI_ORIGINAL + "dataset_texas.tgz")
_LOCATION_URLS = (_SHOKRI_MIRROR + "dataset_location.tgz",)


@register_dataset("purchase100", kind="tabular", default_model="fc",
                  description="Purchase100 (Shokri et al.): 197324 shopping baskets, 600 binary features, "
                              "100 classes",
                  files=f"<data-dir>/dataset_purchase (rows 'label,f1..f600', labels 1..100; --download fetches "
                        f"{_PURCHASE_URLS[0]}), or <data-dir>/purchase100.npz (arrays features and labels, "
                        "labels one-hot or 0..99)")
def _load_purchase100(data_dir: Path, download: bool) -> Dataset:
    return _label_first_or_npz("purchase100", 100,
                               [data_dir / "dataset_purchase", data_dir / "purchase" / "dataset_purchase"],
                               [data_dir / "purchase100.npz", data_dir / "purchase" / "purchase100.npz"],
                               f"extract {_PURCHASE_URLS[0]} into {data_dir}", download,
                               lambda: fetch_archive(_PURCHASE_URLS, data_dir))


@register_dataset("texas100", kind="tabular", default_model="fc",
                  description="Texas100 hospital discharges (Shokri et al.): 67330 records, 6169 binary "
                              "features, 100 procedures",
                  files=f"<data-dir>/texas/100/{{feats,labels}} (comma-separated; labels 1..100; --download fetches "
                        f"{_TEXAS_URLS[0]}), or <data-dir>/texas100.npz (arrays features and labels, labels one-hot "
                        "or 0..99)")
def _load_texas100(data_dir: Path, download: bool) -> Dataset:
    # the archive unpacks texas/100/{feats,labels}; ML Privacy Meter keeps them in dataset_texas/
    folder = first_with([data_dir / "texas" / "100", data_dir / "dataset_texas", data_dir], "feats")
    npz = first_file([data_dir / "texas100.npz", data_dir / "texas" / "texas100.npz"])
    if not (folder / "feats").exists() and npz is not None:
        return _tabular_dataset("texas100", *_read_npz("texas100", npz, 100), 100)
    feats, labels = folder / "feats", folder / "labels"
    require("texas100", [feats, labels], f"extract {_TEXAS_URLS[0]} into {data_dir}", download,
            lambda: fetch_archive(_TEXAS_URLS, data_dir))
    x = _read_int_table("texas100", feats)
    y = zero_based("texas100", _read_int_table("texas100", labels)[:, 0], 100, labels)
    if len(x) != len(y):
        raise MiaError(f"texas100: {feats} has {len(x)} rows but {labels} has {len(y)}; re-download both")
    return _tabular_dataset("texas100", x, y, 100)


@register_dataset("location", kind="tabular", default_model="fc",
                  description="Location (Foursquare check-ins, Shokri et al.): 5010 users, 446 binary "
                              "features, 30 classes",
                  files=f"<data-dir>/location/bangkok (rows 'label,f1..f446', labels 1..30; --download fetches "
                        f"{_LOCATION_URLS[0]}), or <data-dir>/location/data_complete.npz (MemGuard's: arrays "
                        "x and y, labels 1..30 or 0..29)")
def _load_location(data_dir: Path, download: bool) -> Dataset:
    return _label_first_or_npz("location", 30, [data_dir / "location" / "bangkok", data_dir / "bangkok"],
                               [data_dir / "location" / "data_complete.npz", data_dir / "data_complete.npz"],
                               f"extract {_LOCATION_URLS[0]} into {data_dir / 'location'}", download,
                               lambda: fetch_archive(_LOCATION_URLS, data_dir, extract_to=data_dir / "location"))


def _label_first_or_npz(name: str, classes: int, text: list[Path], npz: list[Path], how: str, download: bool,
                        fetch: Callable[[], None]) -> Dataset:
    """A Shokri-style table (the first of ``text`` that exists, else downloaded to ``text[0]``), or an .npz copy
    (the first of ``npz``) where no table is there: the table wins, as the file the archive ships."""
    path, copy = first_file(text), first_file(npz)
    if path is None and copy is not None:
        return _tabular_dataset(name, *_read_npz(name, copy, classes), classes)
    path = path or text[0]
    require(name, [path], how, download, fetch)
    return _tabular_dataset(name, *_label_first_table(name, path, classes), classes)
