"""The dataset registry and the loaders behind ``--dataset``.

Each loader reads the standard on-disk format of its dataset under
``--data-dir`` (the layout torchvision or the original authors use, so files
people already have work as they are), concatenates any train/test files into
one pool, and returns a :class:`~mia.data.base.Dataset`. Loaders that can
fetch their files do so only when asked (``download=True``); otherwise a
missing file is a :class:`MiaError` naming the exact path and how to get it.

Two datasets need no files: ``digits`` (scikit-learn) and ``purchase-synth``
(generated), so that every command runs offline out of the box.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mia.data.base import Dataset, DatasetSpec
from mia.data.safe_pickle import load_pickle
from mia.errors import PLUGIN_HINT, MiaError
from mia.registry import Param, Registry, coerce

DATASETS = Registry[DatasetSpec]("dataset", hint=PLUGIN_HINT)

DEFAULT_DATA_DIR = Path("data")  # where files are looked for when no --data-dir is given

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False,
                 **params) -> Dataset:
    """Load a registered dataset by name.

    ``params`` are the dataset's own parameters (``mia datasets`` lists them);
    strings such as the CLI's ``key=value`` values are converted to the
    declared types. Unknown names or parameters and bad values raise
    :class:`MiaError`.
    """
    spec = DATASETS.get(name)
    values = {key: param.default for key, param in spec.params.items()}
    values.update(coerce(spec.params, params, f"dataset {name}"))
    root = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR
    data = spec.load(root, download, **values)
    if not isinstance(data, Dataset):  # a user's own loader (MIA_PLUGINS)
        raise MiaError(f"dataset {name}: its loader returned {type(data).__name__}, not a mia.data.Dataset")
    if data.kind != spec.kind:
        raise MiaError(f"dataset {name} is registered as {spec.kind} but its loader returned {data.kind} data; "
                       "make DatasetSpec(kind=...) and Dataset(kind=...) agree")
    return data


def _dataset(name: str, *, description: str, kind: str, files: str, default_model: str,
             params: dict[str, Param] | None = None) -> Callable:
    """Register the decorated ``load(data_dir, download, **params)`` as dataset ``name``."""

    def wrap(load: Callable[..., Dataset]) -> Callable[..., Dataset]:
        DATASETS.register(name, DatasetSpec(name=name, load=load, description=description, kind=kind,
                                            files=files, params=params or {}, default_model=default_model))
        return load

    return wrap


# ---------------------------------------------------------------- helpers


def _require(dataset: str, paths: Sequence[Path], how: str, download: bool = False,
             fetch: Callable[[], None] | None = None) -> None:
    """Make sure ``paths`` exist: fetch them if asked and possible, else name the first missing one."""
    missing = [p for p in paths if not p.exists()]
    if missing and download and fetch is not None:
        try:
            fetch()
        except Exception as exc:  # network, checksum and archive errors all end the same way
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise MiaError(f"{dataset}: download failed ({reason}); fetch it by hand: {how}") from None
        missing = [p for p in paths if not p.exists()]
    if missing:
        hint = "pass --download, or " + how if fetch is not None and not download else how
        raise MiaError(f"{dataset}: missing {missing[0]}; {hint}")


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 ``N x C x H x W`` images on the [0, 1] scale.

    Counts pixel values per channel (a 256-bin histogram, chunk by chunk) instead
    of converting the whole set to float, which for CINIC-10 would be 3 GB.
    """
    counts = np.zeros((x.shape[1], 256), dtype=np.int64)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        for c in range(x.shape[1]):
            counts[c] += np.bincount(block[:, c].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    std = np.sqrt(np.maximum(counts @ values**2 / total - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _image_dataset(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, augment: bool,
                   stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> Dataset:
    """A :class:`Dataset` of uint8 images, normalized by ``stats`` or by the data's own."""
    mean, std = stats or _channel_stats(x)
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)),
                   torch.from_numpy(np.asarray(y, dtype=np.int64)), num_classes, "image",
                   mean=mean, std=std, augment=augment)


def _read_images(paths: Sequence[Path], size: int, channels: int) -> np.ndarray:
    """Decode image files into uint8 ``N x C x size x size``, resizing where needed.

    Decoding runs in threads: PIL releases the GIL while it decodes, so
    100k-image folders use every core instead of one.
    """
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}[channels]
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)

    def read(i: int) -> None:
        try:
            with Image.open(paths[i]) as image:
                image = image.convert(mode)
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(image).reshape(size, size, channels).transpose(2, 0, 1)
        except (OSError, UnidentifiedImageError) as exc:
            raise MiaError(f"cannot read image {paths[i]} ({exc}); remove or replace the file") from None

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(read, range(len(paths))))
    return out


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted (so that loading is deterministic)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(root: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """Classes (sorted subfolder names unless given), image paths and labels of ``root/<class>/*``."""
    if classes is None:  # hidden and tool folders (.ipynb_checkpoints, __MACOSX) are no classes
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        folder = root / cls
        files = _image_files(folder) if folder.is_dir() else []
        paths += files
        labels += [label] * len(files)
    return list(classes), paths, labels


def _tabular_dataset(name: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> Dataset:
    """A tabular :class:`Dataset`: uint8 if the features are binary (4x smaller), else float32."""
    binary = x.size == 0 or (x.min() >= 0 and x.max() <= 1 and np.array_equal(x, np.round(x)))
    x = x.astype(np.uint8 if binary else np.float32, copy=False)
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)),
                   num_classes, "tabular")


def _zero_based(dataset: str, labels: np.ndarray, num_classes: int, path: Path,
                one_based: bool = True) -> np.ndarray:
    """Labels ``1..num_classes`` (or already ``0..num_classes-1``) as int64 ``0..num_classes-1``."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if one_based:
        y = y - 1
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        first = 1 if one_based else 0
        raise MiaError(f"{dataset}: labels in {path} must be {first}..{num_classes - 1 + first}; "
                       "the file is not in the expected format, re-download it")
    return y


def _read_int_table(dataset: str, path: Path, delimiter: str | None = ",") -> np.ndarray:
    """A text table of small non-negative integers as uint8 (numpy's C parser, no per-line Python)."""
    try:
        return np.loadtxt(path, delimiter=delimiter, dtype=np.uint8, ndmin=2)
    except (ValueError, OverflowError) as exc:
        raise MiaError(f"{dataset}: {path} is not comma-separated 0/1 integers ({exc}); "
                       "re-download the file") from None


def _download_archive(url: str, root: Path, md5: str | None = None, filename: str | None = None) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    download_and_extract_archive(url, download_root=str(root), filename=filename, md5=md5)


# ---------------------------------------------------------------- offline datasets


@_dataset("digits", kind="image", default_model="mlp",
          description="scikit-learn's 8x8 handwritten digits (1797 images, 10 classes); ships with "
                      "scikit-learn, no files needed",
          files="none (bundled with scikit-learn)")
def _load_digits(data_dir: Path, download: bool) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16: stretch to 0..255 so that digits is a uint8 image set like the rest.
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return _image_dataset("digits", x, bunch.target, 10, augment=False)  # flips change digits


@_dataset("purchase-synth", kind="tabular", default_model="fc",
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


# ---------------------------------------------------------------- image datasets

_CIFAR = {
    # name: (torchvision class, batch files, label key, classes, standard mean/std)
    "cifar10": ("CIFAR10", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10,
                ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    "cifar100": ("CIFAR100", ["train", "test"], "fine_labels", 100,
                 ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
}


def _cifar_loader(name: str) -> Callable[..., Dataset]:
    class_name, batches, label_key, num_classes, stats = _CIFAR[name]

    def load(data_dir: Path, download: bool) -> Dataset:
        import torchvision.datasets

        source = getattr(torchvision.datasets, class_name)  # only its URL, checksum and folder are used
        paths = [data_dir / source.base_folder / batch for batch in batches]
        how = f"extract {source.url} into {data_dir}"
        _require(name, paths, how, download,
                 lambda: _download_archive(source.url, data_dir, source.tgz_md5, source.filename))
        xs, ys = [], []
        for path in paths:
            batch = load_pickle(path)  # restricted: these files are pickles, never trust them
            if not isinstance(batch, dict):
                raise MiaError(f"{name}: {path} is not a CIFAR batch; re-download it")
            batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
            if "data" not in batch or label_key not in batch:
                raise MiaError(f"{name}: {path} lacks 'data' or '{label_key}'; re-download it")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise MiaError(f"{name}: {path} holds data of shape {data.shape}, not N x 3072; "
                               "re-download it")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(_zero_based(name, batch[label_key], num_classes, path, one_based=False))
        return _image_dataset(name, np.concatenate(xs), np.concatenate(ys), num_classes,
                              augment=True, stats=stats)

    return load


_dataset("cifar10", kind="image", default_model="resnet18",
         description="CIFAR-10: 60000 32x32 colour images, 10 classes (train+test pooled)",
         files="<data-dir>/cifar-10-batches-py/{data_batch_1..5,test_batch} (torchvision layout; "
               "--download fetches https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)")(
    _cifar_loader("cifar10"))

_dataset("cifar100", kind="image", default_model="resnet18",
         description="CIFAR-100: 60000 32x32 colour images, 100 fine classes (train+test pooled)",
         files="<data-dir>/cifar-100-python/{train,test} (torchvision layout; "
               "--download fetches https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)")(
    _cifar_loader("cifar100"))


@_dataset("svhn", kind="image", default_model="resnet18",
          description="SVHN: 99289 32x32 house-number crops, 10 classes (train+test pooled)",
          files="<data-dir>/{train_32x32.mat,test_32x32.mat} (torchvision layout; --download fetches "
                "them from http://ufldl.stanford.edu/housenumbers/)")
def _load_svhn(data_dir: Path, download: bool) -> Dataset:
    from scipy.io import loadmat
    from torchvision.datasets import SVHN

    splits = [SVHN.split_list[split] for split in ("train", "test")]  # [url, filename, md5]
    paths = [data_dir / filename for _, filename, _ in splits]

    def fetch() -> None:
        from torchvision.datasets.utils import download_url

        for url, filename, md5 in splits:
            download_url(url, str(data_dir), filename, md5)

    _require("svhn", paths, f"download {', '.join(url for url, _, _ in splits)} into {data_dir}",
             download, fetch)
    xs, ys = [], []
    for path in paths:
        try:
            mat = loadmat(path, variable_names=["X", "y"])
        except Exception as exc:  # scipy raises several types for non-.mat files
            raise MiaError(f"svhn: cannot read {path} ({exc}); re-download it") from None
        if "X" not in mat or "y" not in mat or mat["X"].ndim != 4:
            raise MiaError(f"svhn: {path} lacks the X (32x32x3xN) and y arrays; re-download it")
        y = np.asarray(mat["y"]).reshape(-1)
        if y.size and (y.min() < 1 or y.max() > 10):
            raise MiaError(f"svhn: {path} holds labels {int(y.min())}..{int(y.max())}, not 1..10; re-download it")
        xs.append(mat["X"].transpose(3, 2, 0, 1))  # H x W x C x N -> N x C x H x W
        ys.append(y % 10)  # the digit 0 is stored as label 10
    # No augmentation: the crop-and-flip recipe mirrors images, and a mirrored digit
    # (2, 5, 7, ...) is no longer that digit; crops alone are not worth a second recipe.
    return _image_dataset("svhn", np.concatenate(xs), np.concatenate(ys), 10, augment=False)


@_dataset("cinic10", kind="image", default_model="resnet18",
          description="CINIC-10: 270000 32x32 colour images (CIFAR-10 + ImageNet), 10 classes "
                      "(train+valid+test pooled)",
          files="<data-dir>/cinic-10/{train,valid,test}/<class>/*.png (get CINIC-10.tar.gz from "
                "https://datashare.ed.ac.uk/handle/10283/3192 and extract it into <data-dir>/cinic-10)")
def _load_cinic10(data_dir: Path, download: bool) -> Dataset:
    root = data_dir / "cinic-10"
    parts = [root / part for part in ("train", "valid", "test")]
    _require("cinic10", parts, "get CINIC-10.tar.gz from https://datashare.ed.ac.uk/handle/10283/3192 "
                               f"and extract it into {root} (no automatic download)")
    classes, paths, labels = _class_folders(parts[0])
    for part in parts[1:]:
        _, more_paths, more_labels = _class_folders(part, classes)
        paths += more_paths
        labels += more_labels
    if not paths:
        raise MiaError(f"cinic10: no images under {root}/train/<class>/; extract CINIC-10.tar.gz there")
    x = _read_images(paths, 32, 3)  # a few CINIC images are greyscale: converted to RGB
    return _image_dataset("cinic10", x, np.asarray(labels), len(classes), augment=True)


_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@_dataset("tinyimagenet", kind="image", default_model="resnet18",
          description="Tiny ImageNet: 110000 64x64 colour images, 200 classes (train+val pooled; "
                      "the unlabeled test set is not used)",
          files="<data-dir>/tiny-imagenet-200/{wnids.txt,train/<wnid>/images/*.JPEG,val/images/*.JPEG,"
                f"val/val_annotations.txt}} (--download fetches {_TINY_URL})")
def _load_tinyimagenet(data_dir: Path, download: bool) -> Dataset:
    root = data_dir / "tiny-imagenet-200"
    wnids_file, annotations = root / "wnids.txt", root / "val" / "val_annotations.txt"
    _require("tinyimagenet", [wnids_file, root / "train", annotations],
             f"extract {_TINY_URL} into {data_dir}", download, lambda: _download_archive(_TINY_URL, data_dir))
    wnids = wnids_file.read_text().split()
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    paths, labels = [], []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        files = _image_files(folder) if folder.is_dir() else []
        paths += files
        labels += [label_of[wnid]] * len(files)
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise MiaError(f"tinyimagenet: bad line in {annotations}: {line!r}; re-download the archive")
        paths.append(root / "val" / "images" / fields[0])
        labels.append(label_of[fields[1]])
    if not paths:
        raise MiaError(f"tinyimagenet: no images under {root}/train/<wnid>/images/; re-extract the archive")
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise MiaError(f"tinyimagenet: missing {missing}; re-extract {_TINY_URL} into {data_dir}")
    x = _read_images(paths, 64, 3)  # some Tiny ImageNet JPEGs are greyscale: converted to RGB
    return _image_dataset("tinyimagenet", x, np.asarray(labels), len(wnids), augment=True)


@_dataset("imagefolder", kind="image", default_model="resnet18",
          description="any class-per-folder image set (Dermnet, CH-MNIST, ...): one subfolder per "
                      "class, resized to size x size",
          files="<data-dir>/<class>/*.{png,jpg,jpeg,bmp,tif,tiff}; classes are the sorted folder names",
          params={"size": Param(int, 32, "side length images are resized to"),
                  "channels": Param(int, 3, "3 (RGB) or 1 (greyscale)"),
                  "augment": Param(bool, True, "train with random crops and flips (false for "
                                                   "images whose meaning flips change)")})
def _load_imagefolder(data_dir: Path, download: bool, size: int, channels: int, augment: bool) -> Dataset:
    if size < 1:
        raise MiaError(f"imagefolder.size must be at least 1, got {size}")
    if channels not in (1, 3):
        raise MiaError(f"imagefolder.channels must be 1 or 3, got {channels}")
    how = f"put the images in {data_dir}/<class>/ (one folder per class) and pass that folder as --data-dir"
    _require("imagefolder", [data_dir], how)
    if not Path(data_dir).is_dir():
        raise MiaError(f"imagefolder: {data_dir} is a file, not a folder; {how}")
    classes, paths, labels = _class_folders(data_dir)
    if len(classes) < 2 or not paths:
        raise MiaError(f"imagefolder: found {len(classes)} class folders and {len(paths)} images "
                       f"in {data_dir}; {how}")
    empty = [c for i, c in enumerate(classes) if i not in set(labels)]
    if empty:
        raise MiaError(f"imagefolder: class folder(s) {', '.join(empty)} in {data_dir} hold no images "
                       f"({', '.join(sorted(IMAGE_SUFFIXES))}); fill or remove them")
    x = _read_images(paths, size, channels)
    return _image_dataset("imagefolder", x, np.asarray(labels), len(classes), augment=augment)


# ---------------------------------------------------------------- tabular datasets

_PURCHASE_URL = "https://www.comp.nus.edu.sg/~reza/files/dataset_purchase.tgz"
_TEXAS_URL = "https://www.comp.nus.edu.sg/~reza/files/dataset_texas.tgz"


@_dataset("purchase100", kind="tabular", default_model="fc",
          description="Purchase100 (Shokri et al.): 197324 shopping baskets, 600 binary features, "
                      "100 classes",
          files=f"<data-dir>/dataset_purchase (rows 'label,f1..f600', labels 1..100; "
                f"--download fetches {_PURCHASE_URL})")
def _load_purchase100(data_dir: Path, download: bool) -> Dataset:
    path = data_dir / "dataset_purchase"
    _require("purchase100", [path], f"extract {_PURCHASE_URL} into {data_dir}", download,
             lambda: _download_archive(_PURCHASE_URL, data_dir))
    table = _read_int_table("purchase100", path)
    if table.shape[1] < 2:
        raise MiaError(f"purchase100: {path} rows must be 'label,f1..f600'; re-download it")
    y = _zero_based("purchase100", table[:, 0], 100, path)
    return _tabular_dataset("purchase100", table[:, 1:], y, 100)


@_dataset("texas100", kind="tabular", default_model="fc",
          description="Texas100 hospital discharges (Shokri et al.): 67330 records, 6169 binary "
                      "features, 100 procedures",
          files=f"<data-dir>/texas/100/{{feats,labels}} (comma-separated; labels 1..100; "
                f"--download fetches {_TEXAS_URL})")
def _load_texas100(data_dir: Path, download: bool) -> Dataset:
    feats, labels = data_dir / "texas" / "100" / "feats", data_dir / "texas" / "100" / "labels"
    _require("texas100", [feats, labels], f"extract {_TEXAS_URL} into {data_dir}", download,
             lambda: _download_archive(_TEXAS_URL, data_dir))
    x = _read_int_table("texas100", feats)
    y = _zero_based("texas100", _read_int_table("texas100", labels)[:, 0], 100, labels)
    if len(x) != len(y):
        raise MiaError(f"texas100: {feats} has {len(x)} rows but {labels} has {len(y)}; re-download both")
    return _tabular_dataset("texas100", x, y, 100)


@_dataset("location", kind="tabular", default_model="fc",
          description="Location (Foursquare check-ins, Shokri et al.): 5010 users, 446 binary "
                      "features, 30 classes",
          files="<data-dir>/location/data_complete.npz with arrays x (N x 446, 0/1) and y "
                "(labels 1..30 or 0..29); no public download")
def _load_location(data_dir: Path, download: bool) -> Dataset:
    path = data_dir / "location" / "data_complete.npz"
    _require("location", [path], "there is no public download: get data_complete.npz from the authors "
                                 "of the dataset (Shokri et al. 2017) and put it there")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise MiaError(f"location: {path} must hold arrays 'x' and 'y', has {data.files}")
            x, y = data["x"], data["y"].reshape(-1)
    except MiaError:
        raise
    except Exception as exc:  # not a zip, or object arrays (refused without pickle)
        raise MiaError(f"location: cannot read {path} ({exc}); it must be an .npz of plain arrays") from None
    if x.ndim != 2 or len(x) != len(y):
        raise MiaError(f"location: {path} x must be N x 446 with one label in y per row; "
                       f"got x {x.shape}, y {y.shape}")
    y = _zero_based("location", y, 30, path, one_based=bool(len(y)) and y.min() >= 1)
    return _tabular_dataset("location", x, y, 30)
