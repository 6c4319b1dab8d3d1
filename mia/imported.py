"""Targets trained elsewhere: a checkpoint and the rows it trained on, audited like a target ``mia`` trained.

An ML engineer auditing a model that is already trained (by their own code,
on a dataset of the registry or a plugin's) brings its weights and the list
of the dataset rows it trained on. :func:`split_around` makes the usual
split with those rows as the members: evaluation non-members, validation and
the attacker's population are drawn from the other rows, which the model
never saw. :func:`load_network` loads the weights into the architecture the
run names. From there the run is an ordinary target (``mia train --checkpoint
FILE --members FILE``): its signals are stored, ``mia attack`` trains
reference models with the recipe the options give (the attacker's guess of
how the target was trained, as for any target) and they select their own
best epoch, since the target's is unknown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mia.data import Dataset, Split, SplitConfig
from mia.errors import MiaError
from mia.models import build_model


def read_members(path: str | Path, n: int) -> np.ndarray:
    """The sorted dataset rows of a members file: ``.npy`` of integers, or text with one integer per line (a
    first line that is not a number, a CSV header such as ``index``, is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise MiaError(f"members file {str(path)!r} not found; pass the list of dataset rows the model trained on")
    try:
        if path.suffix == ".npy":
            rows = np.load(path, allow_pickle=False)
        else:
            lines = [line.split(",")[0].strip() for line in path.read_text().splitlines() if line.strip()]
            if lines and not lines[0].lstrip("-").isdigit():
                lines = lines[1:]  # a header
            rows = np.array([int(line) for line in lines])
    except (ValueError, OSError) as exc:
        raise MiaError(f"members file {path} must hold one dataset row index per line (or an .npy of "
                       f"integers): {exc}") from None
    return checked_members(rows, n, f"members file {path}")


def checked_members(rows, n: int, what: str = "members") -> np.ndarray:
    """``rows`` as sorted int64 dataset indices, refused with a one-line error unless they are distinct
    integers in ``0..n-1``, at least one."""
    rows = np.asarray(rows).ravel()
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise MiaError(f"{what} holds {rows.dtype} values; row indices are integers")
    rows = rows.astype(np.int64)
    if rows.size == 0:
        raise MiaError(f"{what} is empty; it lists the dataset rows the model trained on")
    if rows.min() < 0 or rows.max() >= n:
        raise MiaError(f"{what} has rows outside 0..{n - 1} (min {rows.min()}, max {rows.max()}); "
                       "the indices are positions in the dataset as mia loads it")
    unique = np.unique(rows)
    if len(unique) != len(rows):
        raise MiaError(f"{what} lists {len(rows) - len(unique)} rows twice; list each once")
    return unique


def split_around(n: int, members: np.ndarray, seed: int, config: SplitConfig | None = None) -> Split:
    """A :class:`Split` of ``n`` rows whose members are ``members``; the rest drawn from ``seed``.

    Non-members and validation take ``config``'s fractions of all ``n`` rows
    (as :func:`mia.data.make_split` does), from the rows outside ``members``;
    the population is what is left. ``member_fraction`` is not read.
    """
    config = config or SplitConfig()
    members = np.unique(np.asarray(members, dtype=np.int64))
    others = np.setdiff1d(np.arange(n), members)
    sizes = [int(f * n) for f in (config.nonmember_fraction, config.validation_fraction)]
    if min(sizes) < 1 or sum(sizes) >= len(others):
        raise MiaError(f"{len(others)} rows outside the {len(members)} members are too few for "
                       f"{sizes[0]} non-members, {sizes[1]} validation rows and an attacker population; "
                       "lower --nonmember-fraction / --validation-fraction")
    rng = np.random.default_rng(seed)
    nonmembers, validation, population = np.split(rng.permutation(others), np.cumsum(sizes))
    return Split(members, np.sort(nonmembers), np.sort(validation), np.sort(population), seed)


def load_network(path: str | Path, model: str, norm: str, data: Dataset) -> nn.Module:
    """The weights of ``path`` (``torch.save(net.state_dict(), path)``) in ``model`` built for ``data``, in eval
    mode on the data's device. Loaded with ``weights_only=True``; a ``{"state_dict": ...}`` wrapper and the
    ``module.`` prefix of ``nn.DataParallel`` are taken off."""
    path = Path(path)
    if not path.is_file():
        raise MiaError(f"checkpoint {str(path)!r} not found; pass the file of torch.save(model.state_dict(), path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or pickled-object file
        raise MiaError(f"cannot read checkpoint {path} as weights ({type(exc).__name__}); save it with "
                       "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MiaError(f"checkpoint {path} is not a state dict; save it with torch.save(model.state_dict(), path)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    network = build_model(model, data.input_shape, data.num_classes, norm=norm)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise MiaError(f"checkpoint {path} does not fit model {model!r} (norm {norm}) for this dataset's "
                       f"{tuple(data.input_shape)} inputs and {data.num_classes} classes ({first}); pass the "
                       "--model and --norm it was trained as") from None
    return network.to(data.x.device).eval()
