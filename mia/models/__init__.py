"""Model architectures, by name.

``build_model(name, input_shape, num_classes, norm)`` is the one way to get a
model: it resolves the name (``wrnD-W`` by pattern), checks that the
architecture fits the data, and builds it with BatchNorm (``norm="bn"``) or
GroupNorm (``norm="gn"``, for DP-SGD with Opacus and for federated training).
Seed the global torch RNG before building (``mia.train.seed_everything``)
when the initialization must be reproducible.
"""

from __future__ import annotations

import hashlib
import inspect

import torch
from torch import nn

from mia.errors import MiaError, unknown
from mia.models import alexnet, cnn_small, densenet, mlp, resnet, vgg, wrn  # noqa: F401  (registers models)
from mia.models.spec import MODELS, NORMS, ModelSpec, group_norm
from mia.models.wrn import WRN_NAME, wrn_spec

__all__ = ["MODELS", "ModelSpec", "NORMS", "architecture_fingerprint", "build_model", "group_norm", "model_spec"]

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
    model = spec.build(shape, num_classes, NORMS[norm])
    if not isinstance(model, nn.Module):
        raise MiaError(f"model {name!r}: its builder returned {type(model).__name__}, not a torch.nn.Module")
    key = (name, shape, num_classes, norm)
    if key not in _OUTPUT_CHECKED and all(p.device.type != "meta" for p in model.parameters()):
        _check_output(model, key)
    return model


_OUTPUT_CHECKED: set[tuple] = set()
"""(name, input shape, classes, norm) whose output was checked once in this process."""


def _check_output(model: nn.Module, key: tuple) -> None:
    """One forward of two zero inputs, in eval mode and without gradients: a ``batch x num_classes`` tensor
    of logits, or a one-line error (a user's own model that ignores ``num_classes`` trained silently wrong,
    one that returns a tuple failed deep inside the loss)."""
    name, shape, num_classes, _ = key
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape), device=next(model.parameters(), torch.zeros(0)).device))
    except Exception as exc:
        raise MiaError(f"model {name!r} fails on inputs of shape {shape}: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MiaError(f"model {name!r} must return logits of shape batch x num_classes = (2, {num_classes}) for "
                       f"inputs of shape (2, *{shape}), got {got}")
    _OUTPUT_CHECKED.add(key)


def architecture_fingerprint(name: str, input_shape: tuple[int, ...], num_classes: int, norm: str = "bn") -> str:
    """A digest of what ``name`` builds for this data: the module tree, every parameter's and buffer's
    shape, and the source of its builder and of module classes outside torch.

    What a cache of trained models keys on besides the name: a user's own model
    (``MIA_PLUGINS``) edited under the same name would otherwise reuse reference
    models of the old architecture. Built on the CPU under a forked RNG, so the
    caller's random stream is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        model = build_model(name, input_shape, num_classes, norm)
    parts = [repr(model)]
    parts += [f"{n}:{tuple(t.shape)}" for n, t in (*model.named_parameters(), *model.named_buffers())]
    sources = [model_spec(name).build] + sorted({type(m) for m in model.modules()
                                                  if not type(m).__module__.startswith("torch.")}, key=str)
    for obj in sources:
        try:
            parts.append(inspect.getsource(obj))
        except (OSError, TypeError):  # built-in, partial, or defined where no source is kept
            parts.append(getattr(obj, "__qualname__", repr(obj)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
