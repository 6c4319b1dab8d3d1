"""Datasets as device-ready tensors, and the membership splits drawn from them."""

from mia.data.base import Dataset, DatasetSpec
from mia.data.datasets import DATASETS, load_dataset
from mia.data import images, tabular  # noqa: F401  (importing them registers their loaders in DATASETS)
from mia.data.splits import Split, SplitConfig, make_split

__all__ = ["Dataset", "DatasetSpec", "DATASETS", "load_dataset", "Split", "SplitConfig", "make_split"]
