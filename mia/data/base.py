"""The in-memory form every dataset is loaded into.

A dataset is two tensors, loaded once and moved to the training device once:
images as uint8 ``N x C x H x W`` (4x smaller than float, converted per batch
on the device), tabular rows as float32 or uint8 ``N x D``. Real datasets that
ship a train/test split are concatenated into one pool: membership splits are
drawn from the pool by :mod:`mia.data.splits`, not taken from the file layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from mia.errors import MiaError
from mia.registry import Param


@dataclass
class Dataset:
    """Features, labels and how to turn a batch of features into model inputs."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    kind: Literal["image", "tabular"]
    mean: tuple[float, ...] | None = None  # per channel, on the [0, 1] scale (images)
    std: tuple[float, ...] | None = None
    augment: bool = False  # crop+flip suits this data (natural images, not digits)
    _affine_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self._check_form()
        self.y = self.y.long()
        if self.num_classes < 2 or len(self.y) and not 0 <= int(self.y.min()) <= int(self.y.max()) < self.num_classes:
            raise MiaError(f"dataset {self.name}: labels must lie in 0..num_classes-1 = 0..{self.num_classes - 1} "
                           "(num_classes >= 2)")

    def _check_form(self) -> None:
        """The form every loader's output must have; a user's own loader (``MIA_PLUGINS``) gets a one-line
        error here instead of a wrong audit: float images in [0, 1] would be divided by 255 again."""
        shapes = {"image": "uint8 N x C x H x W", "tabular": "N x D"}
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise MiaError(f"dataset {self.name}: features and labels must be torch tensors (torch.as_tensor), "
                           f"got {type(self.x).__name__} and {type(self.y).__name__}")
        if self.kind not in shapes:
            raise MiaError(f"dataset {self.name}: kind must be 'image' or 'tabular', got {self.kind!r}")
        image = self.kind == "image"
        if self.x.dim() != (4 if image else 2) or (image and self.x.dtype != torch.uint8):
            raise MiaError(f"dataset {self.name}: {self.kind} features must be {shapes[self.kind]}, got "
                           f"{self.x.dtype} of shape {tuple(self.x.shape)}"
                           + ("; scale images to 0..255 and pass mean/std" if image else ""))
        for stat in (self.mean, self.std):
            if image and stat is not None and len(stat) != self.x.shape[1]:
                raise MiaError(f"dataset {self.name}: mean/std give {len(stat)} channels but the images have "
                               f"{self.x.shape[1]} (shape {tuple(self.x.shape)}: channels come second, N x C x H x W)")
        if image and any(not 0 <= v <= 1 for v in (*(self.mean or ()), *(self.std or ()))):
            raise MiaError(f"dataset {self.name}: mean/std are per channel on the 0..1 scale (images are divided by "
                           f"255 first), got mean={self.mean} std={self.std}; on the 0..255 scale divide them by 255")
        if image and _channels_last(tuple(self.x.shape)):
            raise MiaError(f"dataset {self.name}: images of shape {tuple(self.x.shape)} look like N x H x W x C "
                           "(channels last, as PIL, NumPy and TensorFlow keep them); channels come second: "
                           "x.permute(0, 3, 1, 2).contiguous()")
        if len(self.x) != len(self.y):
            raise MiaError(f"dataset {self.name}: {len(self.x)} rows but {len(self.y)} labels")
        if self.y.dtype.is_floating_point or self.y.dim() != 1:
            raise MiaError(f"dataset {self.name}: labels must be a 1-D integer tensor, got {self.y.dtype} of "
                           f"shape {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        """Its name and shape, not its tensors: a notebook echoing ``mia.experiment.train_run``'s outcome (or
        anything else holding the data) printed every pixel of it."""
        rows = f"{len(self)} {self.kind} rows of {'x'.join(map(str, self.x.shape[1:]))} {str(self.x.dtype)[6:]}"
        return f"Dataset({self.name!r}: {rows}, {self.num_classes} classes, on {self.x.device})"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def fingerprint(self, rows: int = 1024) -> str:
        """A digest of the contents (every label, the features of ``rows`` evenly spaced rows, the
        normalization): what a cache keys on besides a dataset's name, since two folders read by the
        same loader (``imagefolder``, a local Purchase100 copy) share a name and maybe a size."""
        import hashlib

        digest = hashlib.sha256(f"{len(self)} {tuple(self.x.shape)} {self.x.dtype} {self.mean} {self.std}".encode())
        digest.update(self.y.cpu().numpy().tobytes())
        picked = torch.linspace(0, len(self) - 1, min(rows, len(self))).long().to(self.x.device)
        digest.update(self.x[picked].contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:32]

    def to(self, device: torch.device | str) -> "Dataset":
        """The same dataset with both tensors on ``device`` (no copy if already there)."""
        return Dataset(self.name, self.x.to(device), self.y.to(device), self.num_classes,
                       self.kind, self.mean, self.std, self.augment)

    def inputs(self, xb: torch.Tensor) -> torch.Tensor:
        """Model inputs for a batch of raw rows: float32, images scaled and normalized.

        For images, ``(x / 255 - mean) / std`` is one fused multiply-add with
        per-channel constants made once per device, not once per batch.
        """
        if self.kind == "tabular":
            return xb.float()
        scale, shift = self._affine(xb.device)
        return torch.addcmul(shift, xb.float(), scale)

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._affine_cache.get(device)
        if cached is None:
            channels = self.x.shape[1]
            mean = torch.tensor(self.mean if self.mean is not None else (0.0,) * channels)
            std = torch.tensor(self.std if self.std is not None else (1.0,) * channels)
            scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
            shift = (-mean / std).view(1, -1, 1, 1).to(device)
            cached = self._affine_cache[device] = (scale, shift)
        return cached


def _channels_last(shape: tuple[int, ...]) -> bool:
    """``N x H x W x C`` images read as ``N x C x H x W``: a square "C x H" of more than 4 and a last side of
    1, 3 or 4. They failed later as images "28 wide and 1 high" that no model fits; a real many-channel set
    (hyperspectral patches, 200 x 3 x 3) has no square C x H and passes."""
    return shape[1] > 4 and shape[1] == shape[2] and shape[3] in (1, 3, 4)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to load it and how to get its files."""

    name: str
    load: Callable[..., Dataset]  # load(data_dir: Path | None, download: bool, **params)
    description: str
    kind: Literal["image", "tabular"]
    files: str = ""  # where the files go under --data-dir (shown in errors and `mia datasets`)
    params: dict[str, Param] = field(default_factory=dict)
    default_model: str = ""  # empty: the kind's (DEFAULT_MODELS)

    def __post_init__(self):
        """An unnamed default model is the kind's: a user's tabular set defaulted to resnet18 and failed."""
        if not self.default_model:
            object.__setattr__(self, "default_model", DEFAULT_MODELS.get(self.kind, "resnet18"))


DEFAULT_MODELS = {"image": "resnet18", "tabular": "mlp"}
"""The model a dataset registered without ``default_model`` trains, by its kind."""
