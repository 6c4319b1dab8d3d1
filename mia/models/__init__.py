"""Model architectures, by name.

``build_model(name, input_shape, num_classes, norm)`` is the one way to get a
model: it resolves the name (``wrnD-W`` by pattern), checks that the
architecture fits the data, and builds it with BatchNorm (``norm="bn"``) or
GroupNorm (``norm="gn"``, for DP-SGD with Opacus and for federated training).
Seed the global torch RNG before building (``mia.train.seed_everything``)
when the initialization must be reproducible.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Mapping

import torch
from torch import nn

from mia.errors import MiaError, unknown
from mia.plugins import call_users
from mia.models import alexnet, cnn_small, densenet, mlp, resnet, vgg, wrn  # noqa: F401  (registers models)
from mia.models.spec import MODELS, NORMS, ModelSpec
from mia.models.wrn import WRN_NAME, wrn_spec

__all__ = ["MODELS", "ModelSpec", "NORMS", "architecture_fingerprint", "batchnorm_fix", "build_model", "keyed_norm",
           "model_spec"]

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
    model = call_users(f"model {name!r}: its builder", spec.build, shape, num_classes, NORMS[norm])
    if not isinstance(model, nn.Module):
        raise MiaError(f"model {name!r}: its builder returned {type(model).__name__}, not a torch.nn.Module")
    # the builder's code: a name registered again after an edit is checked anew (wrn_spec's fresh closures are not)
    key = (name, shape, num_classes, norm, getattr(spec.build, "__code__", spec.build))
    if key not in _OUTPUT_CHECKED and all(p.device.type != "meta" for p in model.parameters()):
        _check_output(model, key)
    return model


def batchnorm_fix(name: str, norm: str) -> str:
    """How to get ``name`` without BatchNorm, for an error's end: ``--norm gn``, unless that was asked and the
    model has BatchNorm anyway, because its builder ignores the ``norm_layer`` it is given (a user's own
    model, on which "use --norm gn" sent the user round in a circle)."""
    if norm != "gn":
        return "use --norm gn"
    return (f"model {name!r} keeps BatchNorm under --norm gn: its builder must make its normalization layers "
            "with the norm_layer argument it is given (GroupNorm under --norm gn)")


_OUTPUT_CHECKED: set[tuple] = set()
"""(name, input shape, classes, norm, builder code) whose output was checked once in this process."""


def _check_output(model: nn.Module, key: tuple) -> None:
    """A forward of two zero inputs in eval mode and in training mode must give a ``batch x num_classes``
    tensor of logits, or it is a one-line error that says what to return (a user's own model that ignores
    ``num_classes`` trained silently wrong, and one that returns a tuple or a HuggingFace-style dict, in
    either mode, failed deep inside the loss with a traceback: torchvision's GoogLeNet and Inception return
    auxiliary logits in training mode only). Run on a copy, without gradients and under a forked RNG, so
    that the model's BatchNorm statistics and the caller's random stream (dropout draws) are untouched."""
    name, shape, num_classes = key[:3]
    probe = copy.deepcopy(model)
    device = next(probe.parameters(), torch.zeros(0)).device
    for mode in ("", " in training mode"):
        probe.train(bool(mode))
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                out = probe(torch.zeros((2, *shape), device=device))
        except Exception as exc:
            raise MiaError(f"model {name!r} fails on inputs of shape {shape}{mode}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
            raise MiaError(f"model {name!r} must return logits of shape batch x num_classes = (2, {num_classes}) "
                           f"for inputs of shape (2, *{shape}), got {_output_form(out)}{mode}"
                           f"{_output_fix(out)}")
    _OUTPUT_CHECKED.add(key)


def _output_form(out: object) -> str:
    """A shape for a tensor, else the type and what it holds (``tuple of 2``, ``dict with keys logits``)."""
    if isinstance(out, torch.Tensor):
        return str(tuple(out.shape))
    if isinstance(out, Mapping):
        return f"{type(out).__name__} with keys {', '.join(map(str, out))}"
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of {len(out)}"
    return type(out).__name__


def _output_fix(out: object) -> str:
    """How to get the logits tensor out of a model that returns more than it, for the error's end."""
    if isinstance(out, torch.Tensor):
        return ""
    if isinstance(out, Mapping) or hasattr(out, "logits"):
        held = "out['logits']" if isinstance(out, Mapping) and "logits" in out else "out.logits"
        return (f"; return the logits alone, e.g. a wrapper module whose forward returns {held} "
                "(HuggingFace models: model(x).logits)")
    if isinstance(out, (tuple, list)):
        return ("; return the logits alone, e.g. a wrapper module whose forward returns out[0] (torchvision's "
                "GoogLeNet/Inception: build them with aux_logits=False)")
    return "; return the logits tensor"


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


def keyed_norm(name: str, input_shape: tuple[int, ...], num_classes: int, norm: str, architecture: str) -> str:
    """``norm`` as caches of trained models key it: the default ``bn`` where ``norm`` builds the same network
    (``architecture``, its fingerprint; a model without normalization layers), so that ``--norm gn`` on an
    MLP finds the models of the ``bn`` one."""
    if norm != "bn" and architecture == architecture_fingerprint(name, input_shape, num_classes, "bn"):
        return "bn"
    return norm
