"""The dataset registry: ``DATASETS``, :func:`load_dataset` and the decorator loaders register with.

Each loader reads the standard on-disk format of its dataset under
``--data-dir`` (the layout torchvision or the original authors use, so files
people already have work as they are), concatenates any train/test files into
one pool, and returns a :class:`~mia.data.base.Dataset`. Loaders that can
fetch their files do so only when asked (``download=True``); otherwise a
missing file is a :class:`MiaError` naming the exact path and how to get it.

Two datasets need no files: ``digits`` (scikit-learn) and ``purchase-synth``
(generated), so that every command runs offline out of the box.

Where the loaders are:

- :mod:`mia.data.images`: ``digits``, ``cifar10``, ``cifar100``, ``svhn``,
  ``cinic10``, ``tinyimagenet``, ``imagefolder``, and the image readers;
- :mod:`mia.data.tabular`: ``purchase-synth``, ``purchase100``, ``texas100``,
  ``location``, and the table readers;
- :mod:`mia.data.files`: what both share: finding a dataset's files,
  downloading and unpacking archives, checking labels read from a file.

``import mia.data`` imports the two loader modules, which registers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mia.data.base import Dataset, DatasetSpec
from mia.errors import PLUGIN_HINT, MiaError
from mia.plugins import call_users
from mia.registry import Param, Registry, coerce

DATASETS = Registry[DatasetSpec]("dataset", hint=PLUGIN_HINT)

DEFAULT_DATA_DIR = Path("data")  # where files are looked for when no --data-dir is given


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
    data = call_users(f"dataset {name}: its loader", spec.load, root, download, **values)
    if not isinstance(data, Dataset):  # a user's own loader (MIA_PLUGINS)
        raise MiaError(f"dataset {name}: its loader returned {type(data).__name__}, not a mia.data.Dataset")
    if data.kind != spec.kind:
        raise MiaError(f"dataset {name} is registered as {spec.kind} but its loader returned {data.kind} data; "
                       "make DatasetSpec(kind=...) and Dataset(kind=...) agree")
    return data


def register_dataset(name: str, *, description: str, kind: str, files: str, default_model: str,
                     params: dict[str, Param] | None = None) -> Callable:
    """Register the decorated ``load(data_dir, download, **params)`` as dataset ``name``."""

    def wrap(load: Callable[..., Dataset]) -> Callable[..., Dataset]:
        DATASETS.register(name, DatasetSpec(name=name, load=load, description=description, kind=kind,
                                            files=files, params=params or {}, default_model=default_model))
        return load

    return wrap
