"""Model architectures, by name.

``build_model(name, input_shape, num_classes, norm)`` is the one way to get a
model: it resolves the name (``wrnD-W`` by pattern), checks that the
architecture fits the data, and builds it with BatchNorm (``norm="bn"``) or
GroupNorm (``norm="gn"``, for DP-SGD with Opacus and for federated training).
Seed the global torch RNG before building (``mia.train.seed_everything``)
when the initialization must be reproducible.
"""

from __future__ import annotations

from torch import nn

from mia.errors import MiaError, unknown
from mia.models import alexnet, cnn_small, densenet, mlp, resnet, vgg, wrn  # noqa: F401  (registers models)
from mia.models.spec import MODELS, NORMS, ModelSpec, group_norm
from mia.models.wrn import WRN_NAME, wrn_spec

__all__ = ["MODELS", "ModelSpec", "NORMS", "build_model", "group_norm", "model_spec"]

_KIND_BY_RANK = {1: "tabular", 3: "image"}


def model_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``, or the WideResNet that ``wrnD-W`` names."""
    if name not in MODELS and (m := WRN_NAME.fullmatch(name)):
        return wrn_spec(int(m.group(1)), int(m.group(2)))
    return MODELS.get(name)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, norm: str = "bn") -> nn.Module:
    """A freshly initialized ``name`` for inputs of ``input_shape`` (no batch dim).

    ``input_shape`` is ``(C, H, W)`` for images and ``(D,)`` for tabular rows;
    a model that does not accept that kind or size of input, an unknown name
    or an unknown ``norm`` is a one-line :class:`MiaError`.
    """
    spec = model_spec(name)
    if norm not in NORMS:
        raise unknown("norm", norm, NORMS)
    shape = tuple(int(s) for s in input_shape)
    kind = _KIND_BY_RANK.get(len(shape))
    if kind is None:
        raise MiaError(f"model {name!r}: input shape {shape} is neither an image (C, H, W) nor tabular (D,)")
    if kind not in spec.kinds:
        fitting = sorted(n for n, s in MODELS.items() if kind in s.kinds)
        raise MiaError(f"model {name!r} takes {'/'.join(spec.kinds)} data, not {kind} data of shape {shape}; "
                       f"models for {kind} data: {', '.join(fitting)}")
    if kind == "image" and min(shape[1:]) < spec.min_size:
        fitting = sorted(n for n, s in MODELS.items() if kind in s.kinds and s.min_size <= min(shape[1:]))
        raise MiaError(f"model {name!r} needs images of at least {spec.min_size}x{spec.min_size}, "
                       f"got {shape[1]}x{shape[2]}; models that fit: {', '.join(fitting)}")
    if num_classes < 2:
        raise MiaError(f"model {name!r}: need at least 2 classes, got {num_classes}")
    return spec.build(shape, num_classes, NORMS[norm])
