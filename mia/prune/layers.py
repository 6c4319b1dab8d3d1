"""Which tensors pruning acts on, how sparse a model is, and how to finalize a pruned model.

Pruning keeps ``torch.nn.utils.prune``'s reparametrization while it is under
way: a pruned ``weight`` becomes the parameter ``weight_orig`` and the buffer
``weight_mask``, and a forward pre-hook recomputes ``weight = weight_orig *
weight_mask`` before every forward. Fine-tuning therefore trains
``weight_orig`` while the pruned entries stay zero in every forward, and
``train``'s best-epoch state_dict copy/restore carries ``weight_orig`` and the
mask along. :func:`make_permanent` ends it (``prune.remove``): the state_dict
then holds the plain model's keys, with zeros where weights were pruned.

The prunable layers are every Conv (1-3d) and Linear module, the classifier
included (as in mia_prune and iterative magnitude pruning). Filter pruning
leaves the classifier alone: its outputs are the classes. The classifier is the
last Linear module in registration order, which holds for every model in
:mod:`mia.models`.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import prune
from torch.optim.optimizer import register_optimizer_step_post_hook

from mia.errors import MiaError

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Module types whose ``weight`` is prunable."""

BatchNorm = nn.modules.batchnorm._BatchNorm


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    """Every Conv and Linear module of ``model``, in registration order; none is a :class:`MiaError`."""
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    if not layers:
        raise MiaError(f"{type(model).__name__} has no Conv or Linear layers to prune")
    return layers


def classifier(model: nn.Module) -> nn.Linear | None:
    """The output layer: the last Linear module in registration order (None without one)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def filter_layers(model: nn.Module) -> list[nn.Module]:
    """The layers with prunable output filters/units: every Conv and hidden Linear, not the classifier."""
    head = classifier(model)
    layers = [m for m in prunable_layers(model) if m is not head]
    if not layers:
        raise MiaError(f"{type(model).__name__} has no Conv or hidden Linear layers to prune filters of")
    return layers


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers with a learned scale (``affine=True``), in registration order."""
    return [m for m in model.modules() if isinstance(m, BatchNorm) and m.weight is not None]


def reparametrizations(model: nn.Module) -> Iterator[tuple[nn.Module, prune.BasePruningMethod]]:
    """``(module, method)`` for every tensor of ``model`` under a pruning reparametrization."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                yield module, hook


@torch.no_grad()
def sync(model: nn.Module) -> None:
    """Recompute every masked tensor (``weight = weight_orig * weight_mask``) from its current parts.

    The forward pre-hook does this before each forward; between forwards the
    attribute is stale, e.g. after ``load_state_dict`` restored a best epoch's
    ``weight_orig``. Call it before reading pruned weights outside a forward.
    """
    for module, method in reparametrizations(model):
        setattr(module, method._tensor_name, method.apply_mask(module))


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its tensor (``prune.remove``); returns ``model`` with its plain state_dict keys."""
    for module, method in list(reparametrizations(model)):
        prune.remove(module, method._tensor_name)
    return model


class FixedMasks:
    """Fine-tuning a pruned model on plain tensors: the masks folded in, held by gradient masking, re-applied.

    Some training procedures cannot run on ``torch.nn.utils.prune``'s
    reparametrization (Opacus refuses layers with buffers, and the masks are
    buffers). Inside ``with FixedMasks(model):`` the model has plain
    parameters with the pruned entries at zero; each masked parameter's
    gradient is multiplied by its mask, and after every optimizer step the
    masks are multiplied in again: an optimizer that writes the gradient
    itself (Opacus adds DP-SGD's noise to every coordinate after the backward
    hooks ran) would otherwise move the pruned entries, and validation and
    best-epoch selection would see a dense network. On exit the masks are
    applied once more and the reparametrization is restored, so pruning can
    go on.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.masks: list[tuple[nn.Module, str, torch.Tensor]] = []
        self.hooks = []

    def __enter__(self) -> nn.Module:
        sync(self.model)
        self.masks = [(module, method._tensor_name, getattr(module, method._tensor_name + "_mask").detach().clone())
                      for module, method in reparametrizations(self.model)]
        make_permanent(self.model)
        for module, name, mask in self.masks:
            self.hooks.append(getattr(module, name).register_hook(lambda g, m=mask: g * m.to(g.dtype)))
        # every optimizer in the process (a defense may build its own, or wrap one): re-masking is idempotent
        self.hooks.append(register_optimizer_step_post_hook(lambda *_: self._apply()))
        return self.model

    @torch.no_grad()
    def _apply(self) -> None:
        for module, name, mask in self.masks:
            weight = getattr(module, name)
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        self._apply()
        for module, name, mask in self.masks:
            prune.custom_from_mask(module, name, mask)


def mask_of(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The current pruning mask of ``module.<name>``, or None when it is not pruned."""
    return getattr(module, name + "_mask", None)


@torch.no_grad()
def measured_sparsity(model: nn.Module) -> float:
    """The fraction of exactly-zero entries, read from the (masked) weights themselves, not from masks.

    It counts the ``weight`` of every Conv and Linear layer (the tensors
    unstructured pruning acts on; biases and norm parameters are not counted).
    """
    sync(model)
    tensors = [layer.weight for layer in prunable_layers(model)]
    zeros = sum(int((t == 0).sum()) for t in tensors)
    total = sum(t.numel() for t in tensors)
    return zeros / total if total else 0.0


@torch.no_grad()
def zero_filters(layer: nn.Module) -> torch.Tensor:
    """Which output filters/units (dim 0) of ``layer.weight`` are all zero, as a bool vector."""
    return ~layer.weight.flatten(1).ne(0).any(1)


@torch.no_grad()
def filter_sparsity(model: nn.Module) -> float:
    """The fraction of all-zero output filters/units over every Conv and hidden Linear layer."""
    sync(model)
    zeroed = [zero_filters(layer) for layer in filter_layers(model)]
    return sum(int(z.sum()) for z in zeroed) / sum(len(z) for z in zeroed)


@torch.no_grad()
def channel_sparsity(model: nn.Module) -> float:
    """The fraction of BatchNorm channels switched off: scale and shift both zero (0.0 without BatchNorm)."""
    sync(model)
    off = [(bn.weight == 0) & (bn.bias == 0) if bn.bias is not None else bn.weight == 0
           for bn in batch_norms(model)]
    total = sum(len(o) for o in off)
    return sum(int(o.sum()) for o in off) / total if total else 0.0
