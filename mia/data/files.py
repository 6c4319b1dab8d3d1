"""What the loaders share: finding a dataset's files, downloading and unpacking archives, checking labels.

Used by :mod:`mia.data.images` and :mod:`mia.data.tabular`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mia.errors import MiaError


def first_with(candidates: Sequence[Path], marker: str) -> Path:
    """The first folder in ``candidates`` that holds ``marker``, else the first (the documented place).

    People keep a dataset where its archive or their last project put it
    (``data/`` itself, a ``svhn/`` subfolder, ``CINIC-10/``), so each loader
    looks in those places too; errors and downloads use the documented one.
    """
    return next((folder for folder in candidates if (folder / marker).exists()), candidates[0])


def first_file(candidates: Sequence[Path]) -> Path | None:
    """The first of ``candidates`` that is a file, or ``None``."""
    return next((path for path in candidates if path.is_file()), None)


def require(dataset: str, paths: Sequence[Path], how: str, download: bool = False,
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


def zero_based(dataset: str, labels: np.ndarray, num_classes: int, path: Path,
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


def fetch_archive(urls: Sequence[str], root: Path, md5: str | None = None, filename: str | None = None,
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
