"""Full-size files in the real on-disk formats, random content with a class signal: what the real-size runs read.

Purchase100 (197324 x 600, ``dataset_purchase``), Texas100 (67330 x 6169,
``texas/100/{feats,labels}``), Location (5010 x 446, ``bangkok`` with quoted
labels) and CIFAR-10/100 (the pickled batches of torchvision's layout), each
under ``<out>/<dataset>/`` so that ``--data-dir <out>/<dataset>`` reads it. The
tabular rows come from :func:`mia.data.tabular.purchase_synth` (classes with
favourite items, so that a model learns something), the images are a class
colour plus noise. About 1.6 GB in all; a minute or so on 2 CPU cores. The
runs of RESULTS.md's "Real-size datasets on the CPU" read these files.

    python benchmarks/real_size_data.py --out /tmp/scale/data [--datasets purchase100,texas100,location,cifar10,cifar100]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from mia.data.tabular import purchase_synth


def write_table(path: Path, x: np.ndarray, labels: np.ndarray | None = None, quoted: bool = False,
                chunk: int = 4096) -> None:
    """Rows ``label,f1,...`` (or ``f1,...``) of 0/1 features, built as bytes: ``np.savetxt`` formats every value in
    Python and takes minutes for Texas100's 415 million."""
    with open(path, "wb") as f:
        for start in range(0, len(x), chunk):
            block = x[start:start + chunk]
            out = np.empty((len(block), 2 * block.shape[1]), np.uint8)
            out[:, 0::2] = block + ord("0")
            out[:, 1::2] = ord(",")
            out[:, -1] = ord("\n")
            if labels is None:
                f.write(out.tobytes())
            else:
                heads = [f'"{label}",' if quoted else f"{label}," for label in labels[start:start + chunk]]
                f.write(b"".join(head.encode() + row.tobytes() for head, row in zip(heads, out)))


def write_cifar(folder: Path, classes: int, seed: int) -> None:
    """torchvision's CIFAR batches: pickled dicts of ``data`` (N x 3072 uint8) and the labels."""
    rng = np.random.default_rng(seed)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if classes == 10 else ["train", "test"]
    key = b"labels" if classes == 10 else b"fine_labels"
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(40, 216, (classes, 3, 1, 1))
    for name in files:
        n = 50000 if name == "train" else 10000
        y = rng.integers(0, classes, n)
        images = np.clip(colours[y] + rng.normal(0, 50, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
        batch = {b"data": images.reshape(n, 3072), key: [int(v) for v in y], b"batch_label": b"random",
                 b"filenames": [b"%d.png" % i for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def write(dataset: str, out: Path) -> None:
    """``dataset``'s files under ``out/<dataset>``, at the real size."""
    root = out / dataset
    if dataset == "purchase100":
        x, y = purchase_synth(197324, 600, 100, seed=1)
        root.mkdir(parents=True, exist_ok=True)
        write_table(root / "dataset_purchase", x, y + 1)
    elif dataset == "texas100":
        x, y = purchase_synth(67330, 6169, 100, seed=2)
        folder = root / "texas" / "100"
        folder.mkdir(parents=True, exist_ok=True)
        write_table(folder / "feats", x)
        (folder / "labels").write_text("".join(f"{label}\n" for label in y + 1))
    elif dataset == "location":
        x, y = purchase_synth(5010, 446, 30, seed=3)
        (root / "location").mkdir(parents=True, exist_ok=True)
        write_table(root / "location" / "bangkok", x, y + 1, quoted=True)
    elif dataset in ("cifar10", "cifar100"):
        classes = 10 if dataset == "cifar10" else 100
        write_cifar(root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python"), classes, seed=classes)
    else:
        raise SystemExit(f"unknown dataset {dataset!r}; known: purchase100, texas100, location, cifar10, cifar100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder the datasets' folders are written to")
    parser.add_argument("--datasets", default="purchase100,texas100,location,cifar10,cifar100")
    args = parser.parse_args()
    for dataset in args.datasets.split(","):
        write(dataset.strip(), args.out)
        print(f"{dataset}: written under {args.out / dataset}")


if __name__ == "__main__":
    main()
