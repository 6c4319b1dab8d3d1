"""Image datasets: the image readers and the loaders of ``digits``, ``cifar10``, ``cifar100``, ``svhn``,
``cinic10``, ``tinyimagenet`` and ``imagefolder``.

Each returns uint8 ``N x C x H x W`` images (see :mod:`mia.data.datasets` for what loaders do).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mia.data.base import Dataset
from mia.data.datasets import register_dataset
from mia.data.files import fetch_archive, first_with, require, zero_based
from mia.data.safe_pickle import load_pickle
from mia.errors import MiaError
from mia.registry import Param

# torchvision ImageFolder's suffixes: a folder it reads, mia reads too
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")


# ---------------------------------------------------------------- readers


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
    """A 16-bit greyscale image (medical PNGs and TIFFs) scaled to 8 bits; a float one (mode ``F``) too.

    PIL's ``convert("L")`` clips such an image at 255 instead of scaling it,
    which turns nearly every pixel white, and a float image in ``[0, 1]``
    (the usual scale of float TIFFs) black.
    """
    from PIL import Image

    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scale = 255.0 if pixels.max(initial=0) <= 1.0 else 1.0  # [0, 1], else already on the 8-bit scale
        return Image.fromarray(np.rint(np.clip(pixels * scale, 0, 255)).astype(np.uint8))
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


def _class_images(folder: Path) -> list[Path]:
    """The images anywhere under one class folder, sorted, as torchvision's ``ImageFolder`` finds them
    (a class folder may hold subfolders: per patient, per source); hidden and tool folders are skipped."""
    files = _image_files(folder)
    for sub in _subfolders(folder):
        files += _class_images(sub)
    return files


def _class_folders(root: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """Classes (sorted subfolder names unless given), image paths and labels of ``root/<class>/**``."""
    if classes is None:
        classes = [p.name for p in _subfolders(root)]
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        folder = root / cls
        files = _class_images(folder) if folder.is_dir() else []
        paths += files
        labels += [label] * len(files)
    return list(classes), paths, labels


# ---------------------------------------------------------------- loaders


@register_dataset("digits", kind="image", default_model="mlp",
                  description="scikit-learn's 8x8 handwritten digits (1797 images, 10 classes); ships with "
                              "scikit-learn, no files needed",
                  files="none (bundled with scikit-learn)")
def _load_digits(data_dir: Path, download: bool) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16: stretch to 0..255 so that digits is a uint8 image set like the rest.
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return _image_dataset("digits", x, bunch.target, 10, augment=False)  # flips change digits


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
        folder = first_with([data_dir / source.base_folder, data_dir], batches[0])
        paths = [folder / batch for batch in batches]
        how = f"extract {source.url} into {data_dir}"
        # what torchvision's CIFAR10(root=data_dir, download=True) does: the archive into data_dir, unpacked there
        require(name, paths, how, download,
                lambda: fetch_archive([source.url], data_dir, source.tgz_md5, source.filename))
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
            ys.append(zero_based(name, batch[label_key], num_classes, path, one_based=False))
        return _image_dataset(name, np.concatenate(xs), np.concatenate(ys), num_classes,
                              augment=True, stats=stats)

    return load


register_dataset("cifar10", kind="image", default_model="resnet18",
                 description="CIFAR-10: 60000 32x32 colour images, 10 classes (train+test pooled)",
                 files="<data-dir>/cifar-10-batches-py/{data_batch_1..5,test_batch} (torchvision layout; "
                       "--download fetches https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)")(
    _cifar_loader("cifar10"))

register_dataset("cifar100", kind="image", default_model="resnet18",
                 description="CIFAR-100: 60000 32x32 colour images, 100 fine classes (train+test pooled)",
                 files="<data-dir>/cifar-100-python/{train,test} (torchvision layout; "
                       "--download fetches https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)")(
    _cifar_loader("cifar100"))


@register_dataset("svhn", kind="image", default_model="resnet18",
                  description="SVHN: 99289 32x32 house-number crops, 10 classes (train+test pooled)",
                  files="<data-dir>/{train_32x32.mat,test_32x32.mat} (torchvision layout; --download fetches "
                        "them from http://ufldl.stanford.edu/housenumbers/)")
def _load_svhn(data_dir: Path, download: bool) -> Dataset:
    from scipy.io import loadmat
    from torchvision.datasets import SVHN

    splits = [SVHN.split_list[split] for split in ("train", "test")]  # [url, filename, md5]
    # torchvision's SVHN(root) keeps the .mat files in root itself; many projects make that root data/svhn
    folder = first_with([data_dir, data_dir / "svhn"], splits[0][1])
    paths = [folder / filename for _, filename, _ in splits]

    def fetch() -> None:
        from torchvision.datasets.utils import download_url

        for url, filename, md5 in splits:
            download_url(url, str(data_dir), filename, md5)

    require("svhn", paths, f"download {', '.join(url for url, _, _ in splits)} into {data_dir}",
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


# the archive on the Edinburgh DataShare (https://datashare.ed.ac.uk/handle/10283/3192, DOI 10.7488/ds/2448);
# the second address is the same file through the DataShare's REST API, in case the handle address stops redirecting
_CINIC_URLS = ("https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz",
               "https://datashare.ed.ac.uk/server/api/core/bitstreams/e8e186cc-2688-48f1-aa5a-3fda1a43f8b6/content")
_CINIC_MD5 = "6ee4d0c996905fe93221de577967a372"  # the archive's MD5, as the CINIC-10 loaders of other projects pin it


@register_dataset("cinic10", kind="image", default_model="resnet18",
                  description="CINIC-10: 270000 32x32 colour images (CIFAR-10 + ImageNet), 10 classes "
                              "(train+valid+test pooled)",
                  files="<data-dir>/cinic-10/{train,valid,test}/<class>/*.png (CINIC-10.tar.gz from "
                        "https://datashare.ed.ac.uk/handle/10283/3192 extracted into <data-dir>/cinic-10; "
                        "CINIC-10/, cinic10/ or <data-dir> itself holding train/ also work; --download fetches "
                        f"{_CINIC_URLS[0]} and unpacks it into <data-dir>/cinic-10)")
def _load_cinic10(data_dir: Path, download: bool) -> Dataset:
    # CINIC-10.tar.gz holds train/, valid/ and test/ with no folder above them: they land wherever it is
    # unpacked, which projects make CINIC-10/, CINIC10/ or cinic10/, and some make --data-dir itself
    candidates = [data_dir / name for name in ("cinic-10", "CINIC-10", "cinic10", "CINIC10")] + [data_dir]
    root = first_with(candidates, "train")
    parts = [root / part for part in ("train", "valid", "test")]
    # --download keeps the archive in --data-dir, as for the other datasets, and unpacks it into root (cinic-10/)
    require("cinic10", parts, "get CINIC-10.tar.gz from https://datashare.ed.ac.uk/handle/10283/3192 and "
                              f"unpack it with: mkdir -p {root} && tar -xzf CINIC-10.tar.gz -C {root}",
            download, lambda: fetch_archive(_CINIC_URLS, data_dir, _CINIC_MD5, extract_to=root))
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
    archive, or sorted into class folders by one of the common scripts: ``val/<wnid>/(images/)``, or
    ``val/images/<wnid>/`` (``create_val_img_folder``, which keeps the annotations but moves every
    image one folder down, so that reading them at ``val/images/<file>`` named a file as missing)."""
    val, annotations = root / "val", root / "val" / "val_annotations.txt"
    images = val / "images"
    paths, labels = [], []
    if not (images.is_dir() and _image_files(images)):  # sorted into val/images/<wnid>/ or val/<wnid>/(images/)
        sorted_root = next((folder for folder in (images, val) if any((folder / wnid).is_dir() for wnid in label_of)),
                           val)
        for wnid, label in label_of.items():
            files = _wnid_images(sorted_root / wnid)
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


@register_dataset("tinyimagenet", kind="image", default_model="resnet18",
                  description="Tiny ImageNet: 110000 64x64 colour images, 200 classes (train+val pooled; "
                              "the unlabeled test set is not used)",
                  files="<data-dir>/tiny-imagenet-200/{wnids.txt,train/<wnid>/images/*.JPEG,val/images/*.JPEG,"
                        "val/val_annotations.txt} as the archive has them, or with val/ sorted into val/<wnid>/ "
                        "or val/images/<wnid>/ "
                        f"(--download fetches {_TINY_URL})")
def _load_tinyimagenet(data_dir: Path, download: bool) -> Dataset:
    root = first_with([data_dir / "tiny-imagenet-200", data_dir], "wnids.txt")
    wnids_file = root / "wnids.txt"
    require("tinyimagenet", [wnids_file, root / "train", root / "val"], f"extract {_TINY_URL} into {data_dir}",
            download, lambda: fetch_archive([_TINY_URL], data_dir, _TINY_MD5))
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


@register_dataset("imagefolder", kind="image", default_model="resnet18",
                  description="any class-per-folder image set (Dermnet, CH-MNIST, ...): one subfolder per "
                              "class, resized to size x size",
                  files=f"<data-dir>/<class>/**/*.{{{','.join(s[1:] for s in IMAGE_SUFFIXES)}}}; classes are the sorted "
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
    require("imagefolder", [data_dir], how)
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
