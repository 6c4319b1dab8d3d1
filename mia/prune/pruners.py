"""The pruners, by name: magnitude (layer-wise, global), filter (L1/L2) and network slimming.

A pruner is called as ``pruner(model, sparsity)`` and leaves
``torch.nn.utils.prune`` reparametrizations in place (see
:mod:`mia.prune.layers`). ``sparsity`` is an absolute target, not a
fraction of what remains: after the call, that fraction of the pruner's units
is pruned. Pruning is cumulative, so calling it with an increasing schedule
keeps what earlier steps pruned and prunes the difference among the remaining
units (a smaller target than already reached prunes nothing). Targets are
rounded to whole units and always keep at least one unit of each pruned set.

The unit depends on the pruner:

* ``weight`` (``l1-unstructured``, ``l1-global``): single weights of every
  Conv and Linear layer, the classifier included;
* ``filter`` (``l1-filter``, ``l2-filter``): output filters/units (dim 0) of
  every Conv and hidden Linear layer, each layer to the target (Li et al.
  2017); the pruned filters' biases are masked too, so a pruned filter outputs
  exactly zero before any normalization (a BatchNorm after it still adds its
  shift, ``beta - gamma * mean / std``, as in mia_prune's ``ln_structured``;
  ``slimming`` masks BatchNorm channels themselves);
* ``channel`` (``slimming``): BatchNorm channels ranked globally by ``|gamma|``
  (Liu et al. 2017); a pruned channel's scale and shift are masked, and so is
  the filter of the Conv/Linear layer that feeds that BatchNorm directly
  (found by ``torch.fx`` tracing; pre-activation BatchNorms, as in WRN and
  DenseNet, are fed by no single layer, and an untraceable model has only its
  BatchNorm parameters masked); every BatchNorm keeps at least its largest
  channel. Slimming's L1 penalty on ``gamma`` during training is not applied
  here: a pruning run's dense original is the plain centralized run of its
  recipe (``--from-run`` takes one, and the attack on the dense original
  reuses that recipe's reference pool), and a penalty would make it a recipe
  of its own for this pruner alone.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx
from torch import nn
from torch.nn.utils import prune

from mia.errors import MiaError
from mia.prune.layers import (PRUNABLE, batch_norms, channel_sparsity, filter_layers, filter_sparsity, mask_of,
                              measured_sparsity, prunable_layers, sync)
from mia.registry import Registry

PruneFn = Callable[[nn.Module, float], None]


@dataclass(frozen=True)
class Pruner:
    """A registered pruner: ``prune(model, sparsity)`` and the unit its sparsity counts."""

    name: str
    prune: PruneFn
    unit: str  # "weight" | "filter" | "channel"
    description: str

    def __call__(self, model: nn.Module, sparsity: float) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise MiaError(f"pruner {self.name}: sparsity must be in [0, 1), got {sparsity}")
        # On CUDA the trainer leaves image models channels-last (mia.train.train converts them in place), and
        # torch.nn.utils.prune's magnitude pruners flatten weights and masks with .view(-1), which a
        # channels-last tensor refuses: prune on the standard layout (the next fine-tuning converts back).
        # sync: the pruned layers' weight attributes are recomputed from the converted weight_orig and mask.
        model.to(memory_format=torch.contiguous_format)
        sync(model)
        self.prune(model, sparsity)

    @property
    def structured(self) -> bool:
        return self.unit != "weight"

    def pruned_fraction(self, model: nn.Module) -> float:
        """The measured fraction of this pruner's units that are zero (weights, filters or channels)."""
        return _MEASURE[self.unit](model)


_MEASURE: dict[str, Callable[[nn.Module], float]] = {
    "weight": measured_sparsity, "filter": filter_sparsity, "channel": channel_sparsity}

PRUNERS: Registry[Pruner] = Registry("pruner")


def register(name: str, unit: str, description: str) -> Callable[[PruneFn], PruneFn]:
    """Register the decorated ``prune(model, sparsity)`` as pruner ``name``."""

    def wrap(fn: PruneFn) -> PruneFn:
        PRUNERS.register(name, Pruner(name, fn, unit, description))
        return fn

    return wrap


def target_count(sparsity: float, units: int) -> int:
    """How many of ``units`` a target ``sparsity`` prunes: rounded, keeping at least one unit."""
    return max(0, min(round(sparsity * units), units - 1))


def _pruned_weights(layer: nn.Module) -> int:
    mask = mask_of(layer)
    return 0 if mask is None else int((mask == 0).sum())


def _pruned_filters(layer: nn.Module) -> int:
    mask = mask_of(layer)
    return 0 if mask is None else int((~mask.flatten(1).ne(0).any(1)).sum())


def _mask_outputs(layer: nn.Module, keep: torch.Tensor, weight: bool) -> None:
    """Mask output filters/units ``~keep`` of ``layer``: its bias, and its weight when ``weight``."""
    keep = keep.to(device=layer.weight.device)
    if weight:
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        prune.custom_from_mask(layer, "weight", keep.view(shape).expand_as(layer.weight))
    if getattr(layer, "bias", None) is not None:
        prune.custom_from_mask(layer, "bias", keep)


@register("l1-unstructured", "weight", "layer-wise L1 magnitude: each Conv/Linear layer to the target sparsity")
def l1_unstructured(model: nn.Module, sparsity: float) -> None:
    for layer in prunable_layers(model):
        todo = target_count(sparsity, layer.weight.numel()) - _pruned_weights(layer)
        if todo > 0:
            prune.l1_unstructured(layer, "weight", amount=todo)


@register("l1-global", "weight", "global L1 magnitude: the smallest weights across all Conv/Linear layers")
def l1_global(model: nn.Module, sparsity: float) -> None:
    layers = prunable_layers(model)
    total = sum(layer.weight.numel() for layer in layers)
    todo = target_count(sparsity, total) - sum(_pruned_weights(layer) for layer in layers)
    if todo > 0:
        prune.global_unstructured([(layer, "weight") for layer in layers], prune.L1Unstructured, amount=todo)


def ln_filters(model: nn.Module, sparsity: float, n: int) -> None:
    """Prune each Conv/hidden Linear layer's output filters with the smallest L``n`` norms."""
    for layer in filter_layers(model):
        todo = target_count(sparsity, layer.weight.shape[0]) - _pruned_filters(layer)
        if todo > 0:
            prune.ln_structured(layer, "weight", amount=todo, n=n, dim=0)
            _mask_outputs(layer, mask_of(layer).flatten(1).ne(0).any(1).to(layer.weight.dtype), weight=False)


register("l1-filter", "filter", "structured: each Conv/hidden Linear layer's filters with the smallest L1 norm")(
    lambda model, sparsity: ln_filters(model, sparsity, 1))
register("l2-filter", "filter", "structured: each Conv/hidden Linear layer's filters with the smallest L2 norm")(
    lambda model, sparsity: ln_filters(model, sparsity, 2))


def producers(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """BatchNorm -> the Conv/Linear layer whose output it normalizes directly (``torch.fx``; {} if untraceable)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # a forward fx cannot trace: slimming then masks the BatchNorm parameters only
        return {}
    modules = dict(model.named_modules())
    found = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0] if node.args else None
        if isinstance(source, torch.fx.Node) and source.op == "call_module" \
                and isinstance(modules[source.target], PRUNABLE) and len(source.users) == 1:
            found[modules[node.target]] = modules[source.target]
    return found


@register("slimming", "channel", "network slimming: BatchNorm channels with the smallest |gamma|, globally")
@torch.no_grad()
def slimming(model: nn.Module, sparsity: float) -> None:
    norms = batch_norms(model)
    if not norms:
        raise MiaError(f"pruner slimming prunes BatchNorm channels and {type(model).__name__} has none; use a "
                       "model with BatchNorm (resnet18, wrnD-W, vgg16, densenet121) and --norm bn")
    sync(model)  # already pruned channels read as gamma = 0, so they stay among the pruned
    gammas = torch.cat([bn.weight.detach().abs().flatten().float() for bn in norms])
    # Each BatchNorm keeps its largest channel: one whose channels all go cuts the network in two (a plain
    # stack such as vgg16 then answers one class for every input), which Liu et al.'s global threshold allows
    # once a layer's gammas are all small; the count is taken from the other layers instead.
    starts = [0] + list(itertools.accumulate(bn.num_features for bn in norms))[:-1]
    for start, bn in zip(starts, norms):
        gammas[start + int(gammas[start:start + bn.num_features].argmax())] = math.inf
    drop = torch.zeros_like(gammas, dtype=torch.bool)
    count = min(target_count(sparsity, len(gammas)), len(gammas) - len(norms))
    drop[torch.topk(gammas, count, largest=False).indices] = True
    feeding = producers(model)
    for bn, dropped in zip(norms, drop.split([bn.num_features for bn in norms])):
        if not dropped.any():
            continue
        keep = (~dropped).to(bn.weight.dtype)
        prune.custom_from_mask(bn, "weight", keep)
        if bn.bias is not None:
            prune.custom_from_mask(bn, "bias", keep)
        if (layer := feeding.get(bn)) is not None:
            _mask_outputs(layer, keep.to(layer.weight.dtype), weight=True)
