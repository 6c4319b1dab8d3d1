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

# torchvision ImageFolder's suffixes: a folder it reads, mia reads too
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")


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


def _first_with(candidates: Sequence[Path], marker: str) -> Path:
    """The first folder in ``candidates`` that holds ``marker``, else the first (the documented place).

    People keep a dataset where its archive or their last project put it
    (``data/`` itself, a ``svhn/`` subfolder, ``CINIC-10/``), so each loader
    looks in those places too; errors and downloads use the documented one.
    """
    return next((folder for folder in candidates if (folder / marker).exists()), candidates[0])


def _first_file(candidates: Sequence[Path]) -> Path | None:
    """The first of ``candidates`` that is a file, or ``None``."""
    return next((path for path in candidates if path.is_file()), None)


def _require(dataset: str, paths: Sequence[Path], how: str, download: bool = False,
             fetch: Callable[[], None] | None = None) -> None:
    """Make sure ``paths`` exist: fetch them if asked and possible, else name the first missing one."""
    missing = [p for p in paths if not p.exists()]
    if missing and download and fetch is not None:
        try:
            fetch()
        except MiaError:
            raise
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
                image = _eight_bit(image).convert(mode)
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(image).reshape(size, size, channels).transpose(2, 0, 1)
        except (OSError, UnidentifiedImageError) as exc:
            raise MiaError(f"cannot read image {paths[i]} ({exc}); remove or replace the file") from None

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(read, range(len(paths))))
    return out


def _eight_bit(image):
    """A 16-bit greyscale image (medical PNGs and TIFFs) scaled to 8 bits.

    PIL's ``convert("L")`` clips such an image at 255 instead of scaling it,
    which turns nearly every pixel white.
    """
    from PIL import Image

    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return image
    pixels = np.asarray(image).astype(np.float64)
    if image.mode == "I" and pixels.max(initial=0) <= 255:  # 8-bit values stored as 32-bit ints
        return Image.fromarray(pixels.astype(np.uint8))
    return Image.fromarray(np.rint(np.clip(pixels, 0, 65535) / 257.0).astype(np.uint8))


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted (so that loading is deterministic)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subfolders(folder: Path) -> list[Path]:
    """The sorted subfolders of ``folder``; hidden and tool folders (.ipynb_checkpoints, __MACOSX) are none."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _class_folders(root: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """Classes (sorted subfolder names unless given), image paths and labels of ``root/<class>/*``."""
    if classes is None:
        classes = [p.name for p in _subfolders(root)]
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
                one_based: bool | None = True) -> np.ndarray:
    """Labels ``1..num_classes`` (``one_based``) or ``0..num_classes-1`` as int64 ``0..num_classes-1``.

    ``one_based=None`` tells them apart by the largest label: ``num_classes``
    exists only in 1-based labels, so a 0-based file is never shifted (a
    1-based subset that lacks the last class is read as 0-based, a relabeling
    that changes nothing for membership inference).
    """
    y = np.asarray(labels).reshape(-1)
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise MiaError(f"{dataset}: labels in {path} are not whole numbers; the file is not in the expected format")
    y = y.astype(np.int64)
    if one_based is None:
        one_based = bool(len(y)) and int(y.max()) == num_classes
    if one_based:
        y = y - 1
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        first = 1 if one_based else 0
        raise MiaError(f"{dataset}: labels in {path} must be {first}..{num_classes - 1 + first}; "
                       "the file is not in the expected format, re-download it")
    return y


def _read_int_table(dataset: str, path: Path, delimiter: str | None = ",") -> np.ndarray:
    """A text table of small non-negative integers as uint8 (numpy's C parser, no per-line Python).

    Quoted fields are read too: the Location file ``bangkok`` quotes its labels (``"1",0,1,...``).
    """
    try:
        return np.loadtxt(path, delimiter=delimiter, quotechar='"', dtype=np.uint8, ndmin=2)
    except (ValueError, OverflowError) as exc:
        raise MiaError(f"{dataset}: {path} is not comma-separated 0/1 integers ({exc}); "
                       "re-download the file") from None


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
    y = _zero_based(dataset, labels, num_classes, path, one_based=None)
    if x.ndim != 2 or len(x) != len(y):
        raise MiaError(f"{dataset}: {path} features must be N x D with one label per row; "
                       f"got features {x.shape}, labels {y.shape}")
    return x, y


def _extract(archive: Path, dest: Path) -> None:
    """Unpack a downloaded .tar(.gz)/.zip into ``dest``, refusing members that would land outside it.

    torchvision's extractor unpacks tar members wherever their names point
    (``../../.bashrc``, links), and its downloader retries a failed https
    fetch over plain http, so an archive without a checksum is untrusted.
    """
    import tarfile
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:  # ZipFile.extract drops absolute and '..' parts itself
            zf.extractall(dest)
        return
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
            try:
                tar.extractall(dest, filter="data")
            except tarfile.FilterError as exc:
                raise MiaError(f"refusing to unpack {archive}: {exc}; delete it and download it again") from None
            return
        root = dest.resolve()
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if root not in (target, *target.parents) or member.issym() or member.islnk():
                raise MiaError(f"refusing to unpack {archive}: member {member.name!r} leaves {dest} or is a "
                               "link; delete it and download it again")
        tar.extractall(dest)


def _fetch_archive(urls: Sequence[str], root: Path, md5: str | None = None, filename: str | None = None,
                   extract_to: Path | None = None) -> None:
    """Download an archive into ``root`` from the first of ``urls`` that answers, then unpack it.

    An archive already in ``root`` (and matching ``md5``) is unpacked without
    going online. A failed try deletes what it wrote, so the next mirror, or
    the next run, does not unpack half a file.
    """
    from torchvision.datasets.utils import download_url

    filename = filename or os.path.basename(urls[0])
    archive = root / filename
    root.mkdir(parents=True, exist_ok=True)
    for i, url in enumerate(urls):
        try:
            download_url(url, str(root), filename, md5)
            break
        except Exception:
            archive.unlink(missing_ok=True)
            if i == len(urls) - 1:
                raise
    _extract(archive, extract_to or root)


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
        # torchvision's layout, or --data-dir pointing at the batch folder itself
        folder = _first_with([data_dir / source.base_folder, data_dir], batches[0])
        paths = [folder / batch for batch in batches]
        how = f"extract {source.url} into {data_dir}"
        # what torchvision's CIFAR10(root=data_dir, download=True) does: the archive into data_dir, unpacked there
        _require(name, paths, how, download,
                 lambda: _fetch_archive([source.url], data_dir, source.tgz_md5, source.filename))
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
    # torchvision's SVHN(root) keeps the .mat files in root itself; many projects make that root data/svhn
    folder = _first_with([data_dir, data_dir / "svhn"], splits[0][1])
    paths = [folder / filename for _, filename, _ in splits]

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
                "https://datashare.ed.ac.uk/handle/10283/3192 and extract it into <data-dir>/cinic-10; "
                "CINIC-10/, cinic10/ or <data-dir> itself holding train/ also work)")
def _load_cinic10(data_dir: Path, download: bool) -> Dataset:
    # CINIC-10.tar.gz holds train/, valid/ and test/ with no folder above them: they land wherever it is
    # unpacked, which projects make CINIC-10/, CINIC10/ or cinic10/, and some make --data-dir itself
    candidates = [data_dir / name for name in ("cinic-10", "CINIC-10", "cinic10", "CINIC10")] + [data_dir]
    root = _first_with(candidates, "train")
    parts = [root / part for part in ("train", "valid", "test")]
    _require("cinic10", parts, "get CINIC-10.tar.gz from https://datashare.ed.ac.uk/handle/10283/3192 and "
                               f"unpack it with: mkdir -p {root} && tar -xzf CINIC-10.tar.gz -C {root} "
                               "(no automatic download)")
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
_TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # the zip's MD5, as the Tiny ImageNet loaders of other projects pin it


def _wnid_images(folder: Path) -> list[Path]:
    """The images of one class: ``<wnid>/images/*`` as the archive has them, or ``<wnid>/*`` as
    re-organizing scripts leave them (torchvision ImageFolder wants the images one level down)."""
    for candidate in (folder / "images", folder):
        files = _image_files(candidate) if candidate.is_dir() else []
        if files:
            return files
    return []


def _tiny_val(root: Path, label_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Tiny ImageNet's labeled val images: ``val/images`` + ``val/val_annotations.txt`` as in the
    archive, or ``val/<wnid>/`` after the common script that sorts them into class folders."""
    val, annotations = root / "val", root / "val" / "val_annotations.txt"
    paths, labels = [], []
    if not (val / "images").is_dir():  # sorted into val/<wnid>/(images/)
        for wnid, label in label_of.items():
            files = _wnid_images(val / wnid)
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise MiaError(f"tinyimagenet: no images in {val}/images/ or {val}/<wnid>/; re-extract the archive")
        return paths, labels
    if not annotations.is_file():
        raise MiaError(f"tinyimagenet: missing {annotations}; re-extract {_TINY_URL}")
    for line in annotations.read_text().splitlines():
        fields = line.split()  # tab-separated in the archive; tolerate spaces and CRLF
        if not fields:
            continue
        if len(fields) < 2 or fields[1] not in label_of:
            raise MiaError(f"tinyimagenet: bad line in {annotations}: {line!r}; re-download the archive")
        paths.append(val / "images" / fields[0])
        labels.append(label_of[fields[1]])
    return paths, labels


@_dataset("tinyimagenet", kind="image", default_model="resnet18",
          description="Tiny ImageNet: 110000 64x64 colour images, 200 classes (train+val pooled; "
                      "the unlabeled test set is not used)",
          files="<data-dir>/tiny-imagenet-200/{wnids.txt,train/<wnid>/images/*.JPEG,val/images/*.JPEG,"
                "val/val_annotations.txt} as the archive has them, or with val/ sorted into val/<wnid>/ "
                f"(--download fetches {_TINY_URL})")
def _load_tinyimagenet(data_dir: Path, download: bool) -> Dataset:
    root = _first_with([data_dir / "tiny-imagenet-200", data_dir], "wnids.txt")
    wnids_file = root / "wnids.txt"
    _require("tinyimagenet", [wnids_file, root / "train", root / "val"], f"extract {_TINY_URL} into {data_dir}",
             download, lambda: _fetch_archive([_TINY_URL], data_dir, _TINY_MD5))
    wnids = wnids_file.read_text().split()
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    paths, labels = [], []
    for wnid in wnids:
        files = _wnid_images(root / "train" / wnid)
        paths += files
        labels += [label_of[wnid]] * len(files)
    if not paths:
        raise MiaError(f"tinyimagenet: no images under {root}/train/<wnid>/images/; re-extract the archive")
    val_paths, val_labels = _tiny_val(root, label_of)
    paths, labels = paths + val_paths, labels + val_labels
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise MiaError(f"tinyimagenet: missing {missing}; re-extract {_TINY_URL} into {data_dir}")
    x = _read_images(paths, 64, 3)  # some Tiny ImageNet JPEGs are greyscale: converted to RGB
    return _image_dataset("tinyimagenet", x, np.asarray(labels), len(wnids), augment=True)


# split folders an image set may be published in (Dermnet: train/ and test/); their classes are pooled
SPLIT_FOLDERS = ("train", "training", "test", "testing", "val", "valid", "validation")


def _imagefolder_roots(data_dir: Path) -> list[Path]:
    """The folders whose subfolders are the classes.

    That is ``data_dir`` itself, or the one folder an archive unpacked into it
    (CH-MNIST's zip holds ``Kather_texture_2016_image_tiles_5000/<class>/``),
    or, when every subfolder is a split (Dermnet's ``train/`` and ``test/``,
    each with the same class folders), all of those, pooled.
    """
    root = data_dir
    for _ in range(3):  # a lone wrapper folder, nested at most a few deep
        subfolders = _subfolders(root)
        if (len(subfolders) == 1 and not _image_files(root) and not _image_files(subfolders[0])
                and _subfolders(subfolders[0])):
            root = subfolders[0]
        else:
            break
    subfolders = _subfolders(root)
    if subfolders and all(folder.name.lower() in SPLIT_FOLDERS and not _image_files(folder)
                          and _subfolders(folder) for folder in subfolders):
        return subfolders
    return [root]


@_dataset("imagefolder", kind="image", default_model="resnet18",
          description="any class-per-folder image set (Dermnet, CH-MNIST, ...): one subfolder per "
                      "class, resized to size x size",
          files=f"<data-dir>/<class>/*.{{{','.join(s[1:] for s in IMAGE_SUFFIXES)}}}; classes are the sorted "
                "folder names; split folders (<data-dir>/{train,test,val}/<class>/) are pooled, and a lone "
                "folder an archive unpacked into is looked into",
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
    roots = _imagefolder_roots(data_dir)
    classes = sorted({folder.name for root in roots for folder in _subfolders(root)})
    paths, labels = [], []
    for root in roots:
        _, more_paths, more_labels = _class_folders(root, classes)
        paths += more_paths
        labels += more_labels
    where = ", ".join(str(root) for root in roots)
    if len(classes) < 2 or not paths:
        raise MiaError(f"imagefolder: found {len(classes)} class folders and {len(paths)} images "
                       f"in {where}; {how}")
    empty = [c for i, c in enumerate(classes) if i not in set(labels)]
    if empty:
        raise MiaError(f"imagefolder: class folder(s) {', '.join(empty)} in {where} hold no images "
                       f"({', '.join(sorted(IMAGE_SUFFIXES))}); fill or remove them")
    x = _read_images(paths, size, channels)
    return _image_dataset("imagefolder", x, np.asarray(labels), len(classes), augment=augment)


# ---------------------------------------------------------------- tabular datasets

# Shokri et al.'s archives: first the copy in their lab's GitHub repository, then the original address
_SHOKRI_MIRROR = "https://raw.githubusercontent.com/privacytrustlab/datasets/master/"
_SHOKRI_ORIGINAL = "https://www.comp.nus.edu.sg/~reza/files/"
_PURCHASE_URLS = (_SHOKRI_MIRROR + "dataset_purchase.tgz", _SHOKRI_ORIGINAL + "dataset_purchase.tgz")
_TEXAS_URLS = (_SHOKRI_MIRROR + "dataset_texas.tgz", _SHOKRI_ORIGINAL + "dataset_texas.tgz")
_LOCATION_URLS = (_SHOKRI_MIRROR + "dataset_location.tgz",)


def _label_first_table(dataset: str, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``label,f1,...`` with labels ``1..num_classes``: Shokri et al.'s ``dataset_purchase`` and ``bangkok``."""
    table = _read_int_table(dataset, path)
    if table.shape[1] < 2:
        raise MiaError(f"{dataset}: {path} rows must be 'label,f1,f2,...'; re-download it")
    return table[:, 1:], _zero_based(dataset, table[:, 0], num_classes, path)


@_dataset("purchase100", kind="tabular", default_model="fc",
          description="Purchase100 (Shokri et al.): 197324 shopping baskets, 600 binary features, "
                      "100 classes",
          files=f"<data-dir>/dataset_purchase (rows 'label,f1..f600', labels 1..100; --download fetches "
                f"{_PURCHASE_URLS[0]}), or <data-dir>/purchase100.npz (arrays features and labels, "
                "labels one-hot or 0..99)")
def _load_purchase100(data_dir: Path, download: bool) -> Dataset:
    text = [data_dir / "dataset_purchase", data_dir / "purchase" / "dataset_purchase"]
    npz = _first_file([data_dir / "purchase100.npz", data_dir / "purchase" / "purchase100.npz"])
    path = _first_file(text)
    if path is None and npz is not None:
        return _tabular_dataset("purchase100", *_read_npz("purchase100", npz, 100), 100)
    path = path or text[0]
    _require("purchase100", [path], f"extract {_PURCHASE_URLS[0]} into {data_dir}", download,
             lambda: _fetch_archive(_PURCHASE_URLS, data_dir))
    return _tabular_dataset("purchase100", *_label_first_table("purchase100", path, 100), 100)


@_dataset("texas100", kind="tabular", default_model="fc",
          description="Texas100 hospital discharges (Shokri et al.): 67330 records, 6169 binary "
                      "features, 100 procedures",
          files=f"<data-dir>/texas/100/{{feats,labels}} (comma-separated; labels 1..100; --download fetches "
                f"{_TEXAS_URLS[0]}), or <data-dir>/texas100.npz (arrays features and labels, labels one-hot "
                "or 0..99)")
def _load_texas100(data_dir: Path, download: bool) -> Dataset:
    # the archive unpacks texas/100/{feats,labels}; ML Privacy Meter keeps them in dataset_texas/
    folder = _first_with([data_dir / "texas" / "100", data_dir / "dataset_texas", data_dir], "feats")
    npz = _first_file([data_dir / "texas100.npz", data_dir / "texas" / "texas100.npz"])
    if not (folder / "feats").exists() and npz is not None:
        return _tabular_dataset("texas100", *_read_npz("texas100", npz, 100), 100)
    feats, labels = folder / "feats", folder / "labels"
    _require("texas100", [feats, labels], f"extract {_TEXAS_URLS[0]} into {data_dir}", download,
             lambda: _fetch_archive(_TEXAS_URLS, data_dir))
    x = _read_int_table("texas100", feats)
    y = _zero_based("texas100", _read_int_table("texas100", labels)[:, 0], 100, labels)
    if len(x) != len(y):
        raise MiaError(f"texas100: {feats} has {len(x)} rows but {labels} has {len(y)}; re-download both")
    return _tabular_dataset("texas100", x, y, 100)


@_dataset("location", kind="tabular", default_model="fc",
          description="Location (Foursquare check-ins, Shokri et al.): 5010 users, 446 binary "
                      "features, 30 classes",
          files=f"<data-dir>/location/bangkok (rows 'label,f1..f446', labels 1..30; --download fetches "
                f"{_LOCATION_URLS[0]}), or <data-dir>/location/data_complete.npz (MemGuard's: arrays x and y, "
                "labels 1..30 or 0..29)")
def _load_location(data_dir: Path, download: bool) -> Dataset:
    text = [data_dir / "location" / "bangkok", data_dir / "bangkok"]
    npz = _first_file([data_dir / "location" / "data_complete.npz", data_dir / "data_complete.npz"])
    path = _first_file(text)
    if path is None and npz is not None:
        return _tabular_dataset("location", *_read_npz("location", npz, 30), 30)
    path = path or text[0]
    _require("location", [path], f"extract {_LOCATION_URLS[0]} into {path.parent}", download,
             lambda: _fetch_archive(_LOCATION_URLS, data_dir, extract_to=data_dir / "location"))
    return _tabular_dataset("location", *_label_first_table("location", path, 30), 30)
