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

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mia.data import Dataset, Split, SplitConfig
from mia.errors import MiaError
from mia.models import build_model


def check_file(path: str | Path, what: str, fix: str) -> Path:
    """``path`` as a :class:`Path` if it is a file, else a one-line error that says what it is instead."""
    path = Path(path)
    if path.is_dir():
        raise MiaError(f"{what} {str(path)!r} is a folder; {fix}")
    if not path.is_file():
        raise MiaError(f"{what} {str(path)!r} not found; {fix}")
    return path


MEMBERS_FIX = "pass the list of dataset rows the model trained on"
CHECKPOINT_FIX = "pass the file of torch.save(model.state_dict(), path)"


def member_rows(members, n: int) -> np.ndarray:
    """The sorted dataset rows ``members`` names: a file (:func:`read_members`) or an array of indices."""
    if isinstance(members, (str, Path)):
        return read_members(members, n)
    return checked_members(members, n)


def read_members(path: str | Path, n: int) -> np.ndarray:
    """The sorted dataset rows of a members file: ``.npy`` of integers, or text with one integer per line
    (``np.savetxt``'s ``9.000000000000000000e+00`` too). A first line that is not numbers, a CSV header such as
    ``index,label``, is skipped and the rows are the first column (separated by commas, tabs, semicolons or
    spaces). Refused rather than misread: several values on the one line of a file (a joined list), and a
    header whose first column has no name (pandas' ``to_csv()`` writes its own index there)."""
    path = check_file(path, "members file", MEMBERS_FIX)
    if path.suffix == ".npy":
        try:
            rows = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise MiaError(f"members file {path} is not a readable .npy of integers: {exc}") from None
        return checked_members(rows, n, f"members file {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (ValueError, OSError) as exc:
        raise MiaError(f"members file {path} must be text with one dataset row index per line (or an .npy of "
                       f"integers): {exc}") from None
    lines = [re.split(r"[,;\s]+", line.strip().rstrip(",;")) for line in text.splitlines() if line.strip()]
    if lines and (lines[0][0] == "" or any(_number(field) is None for field in lines[0])):  # a header
        header, lines = lines[0], lines[1:]
        if len(header) > 1 and header[0] == "":
            raise MiaError(f"members file {path} has a header whose first column has no name, as pandas writes "
                           "its index: the rows would be that index; save it with to_csv(index=False)")
    elif len(lines) == 1 and len(lines[0]) > 1:
        raise MiaError(f"members file {path} holds {len(lines[0])} values on one line; list one dataset row "
                       "index per line (np.savetxt(path, rows, fmt='%d'))")
    values = []
    for number, fields in enumerate(lines, start=1):
        value = _number(fields[0])
        if value is None or not value.is_integer():
            raise MiaError(f"members file {path} must hold one dataset row index per line (or an .npy of "
                           f"integers); data line {number} starts with {fields[0]!r}")
        values.append(int(value))
    return checked_members(np.array(values, dtype=np.int64), n, f"members file {path}")


def _number(field: str) -> float | None:
    try:
        return float(field)
    except ValueError:
        return None


def checked_members(rows, n: int, what: str = "members") -> np.ndarray:
    """``rows`` as sorted int64 dataset indices, refused with a one-line error unless they are distinct
    integers in ``0..n-1``, at least one."""
    rows = np.asarray(rows).ravel()
    if rows.size and rows.dtype == bool:
        raise MiaError(f"{what} holds a boolean mask; it lists row indices: pass np.flatnonzero(mask)")
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise MiaError(f"{what} holds {rows.dtype} values; row indices are integers")
    rows = rows.astype(np.int64)
    if rows.size == 0:
        raise MiaError(f"{what} is empty; it lists the dataset rows the model trained on")
    if rows.min() < 0 or rows.max() >= n:
        raise MiaError(f"{what} has rows outside 0..{n - 1} (min {rows.min()}, max {rows.max()}); "
                       "the indices are positions in the dataset as mia loads it")
    unique, counts = np.unique(rows, return_counts=True)
    if len(unique) != len(rows):
        twice = unique[counts > 1]
        shown = ", ".join(map(str, twice[:5])) + (", ..." if len(twice) > 5 else "")
        raise MiaError(f"{what} lists {len(twice)} row{'s' if len(twice) > 1 else ''} more than once ({shown}); "
                       "list each once")
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
                       "lower the non-member and validation fractions (--nonmember-fraction, "
                       "--validation-fraction; SplitConfig in Python)")
    rng = np.random.default_rng(seed)
    nonmembers, validation, population = np.split(rng.permutation(others), np.cumsum(sizes))
    return Split(members, np.sort(nonmembers), np.sort(validation), np.sort(population), seed)


def load_network(path: str | Path, model: str, norm: str, data: Dataset) -> nn.Module:
    """The weights of ``path`` (``torch.save(net.state_dict(), path)``) in ``model`` built for ``data``, in eval
    mode on the data's device. Loaded with ``weights_only=True``; the wrappers of common checkpoints are taken
    off: a ``{"state_dict": ...}`` (Lightning) or ``{"model_state_dict": ...}`` (PyTorch's tutorial) dict, the
    ``module.`` prefix of ``nn.DataParallel`` and the ``_orig_mod.`` of ``torch.compile``."""
    path = check_file(path, "checkpoint", CHECKPOINT_FIX)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or pickled-object file
        raise MiaError(f"cannot read checkpoint {path} as weights ({type(exc).__name__}); save it with "
                       "torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        held = (f"a dict with keys {', '.join(map(str, list(state)[:8]))}{', ...' if len(state) > 8 else ''}"
                if isinstance(state, dict) else f"a {type(state).__name__}")
        raise MiaError(f"checkpoint {path} holds {held}, not a state dict; save it with "
                       "torch.save(model.state_dict(), path)")
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    network = build_model(model, data.input_shape, data.num_classes, norm=norm)
    if mismatch := _mismatch(state, network.state_dict()):
        raise MiaError(f"checkpoint {path} does not fit model {model!r} (norm {norm}) for this dataset's "
                       f"{tuple(data.input_shape)} inputs and {data.num_classes} classes ({mismatch}); pass the "
                       "--model and --norm it was trained as")
    network.load_state_dict(state)
    return network.to(data.x.device).eval()


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """How ``state`` differs from the state dict ``expected`` in keys and shapes, a few names each; empty if not."""
    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {list(state[k].shape)} in the checkpoint, {list(v.shape)} in the model"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = [f"{len(names)} {what}: {some(names)}" for what, names in (
        ("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if names]
    return "; ".join(parts)
