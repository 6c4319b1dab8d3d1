"""Disjoint membership splits of one dataset pool, drawn from a seed.

Every experiment cuts the pool into four disjoint index sets:

* ``members``: the target model's training set;
* ``nonmembers``: evaluation non-members the target never sees;
* ``validation``: model selection only (early stopping, tuning), never queried
  by an attack, so that choosing a model does not leak into the evaluation;
* ``population``: the attacker's own data (reference/shadow models, thresholds).

The split is a pure function of ``(n, seed, config)``, independent of global
RNG state, and is saved with the training run so that every later attack
queries exactly the same members and non-members.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from mia.errors import MiaError

_SETS = ("members", "nonmembers", "validation", "population")
_QUERY_STREAM = 1  # a second stream of the split's seed, for subsampling the query set


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of the pool for members, non-members and validation; population is the rest.

    ``max_members`` caps the target's training set (the surplus goes to the
    population) without moving the non-member and validation sets, so runs
    that vary the training-set size are evaluated on the same non-members.
    """

    member_fraction: float = 0.25
    nonmember_fraction: float = 0.25
    validation_fraction: float = 0.1
    max_members: int | None = None

    def __post_init__(self):
        fractions = {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith("_fraction")}
        for name, value in fractions.items():
            if not 0.0 < value < 1.0:
                raise MiaError(f"{name} must be in (0, 1), got {value}")
        if sum(fractions.values()) >= 1.0:
            raise MiaError(f"member, nonmember and validation fractions sum to {sum(fractions.values()):g}; "
                           "they must sum to less than 1 to leave a population for the attacker")
        if self.max_members is not None and self.max_members < 1:
            raise MiaError(f"max_members must be at least 1, got {self.max_members}")


@dataclass(eq=False)
class Split:
    """Four disjoint, sorted int64 index sets into a dataset, and the seed that drew them."""

    members: np.ndarray
    nonmembers: np.ndarray
    validation: np.ndarray
    population: np.ndarray
    seed: int

    def __post_init__(self):
        for name in _SETS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
        self.seed = int(self.seed)

    def query(self) -> tuple[np.ndarray, np.ndarray]:
        """The balanced evaluation set: ``(indices, is_member)``.

        The larger of members and non-members is subsampled (deterministically,
        from the split's seed) to the size of the smaller, so that AUC and
        balanced accuracy are not skewed by a prior; members come first.
        """
        k = min(len(self.members), len(self.nonmembers))
        rng = np.random.default_rng([self.seed, _QUERY_STREAM])
        members = np.sort(rng.choice(self.members, k, replace=False)) if len(self.members) > k else self.members
        nonmembers = (np.sort(rng.choice(self.nonmembers, k, replace=False))
                      if len(self.nonmembers) > k else self.nonmembers)
        indices = np.concatenate([members, nonmembers])
        is_member = np.zeros(len(indices), dtype=bool)
        is_member[:k] = True
        return indices, is_member

    def check(self, n: int) -> "Split":
        """Raise :class:`MiaError` unless the sets are disjoint indices into ``n`` rows; return self."""
        everything = np.concatenate([getattr(self, name) for name in _SETS])
        if len(everything) and (everything.min() < 0 or everything.max() >= n):
            raise MiaError(f"split indices run outside a dataset of {n} rows; "
                           "the split was made for another dataset: use the run's own dataset")
        if len(np.unique(everything)) != len(everything):
            raise MiaError("split sets overlap or repeat indices; the split file is corrupt: "
                           "re-create it with make_split")
        return self

    def save(self, path: str | Path) -> None:
        """Write the split to ``path`` as an ``.npz`` (exactly that path, no suffix added)."""
        with open(path, "wb") as f:
            np.savez(f, seed=np.int64(self.seed), **{name: getattr(self, name) for name in _SETS})

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        """Read a split written by :meth:`save` (no pickles: plain arrays only)."""
        path = Path(path)
        if not path.is_file():
            raise MiaError(f"split file {path} not found; pass the path written by the training run")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [key for key in (*_SETS, "seed") if key not in data.files]
                if missing:
                    raise MiaError(f"{path} is not a split file (missing {', '.join(missing)}); "
                                   "pass the split.npz written by the training run")
                return cls(**{name: data[name] for name in _SETS}, seed=int(data["seed"]))
        except MiaError:
            raise
        except Exception as exc:  # not a zip, truncated, object arrays, ...
            raise MiaError(f"cannot read split file {path} ({type(exc).__name__}: {exc}); "
                           "pass the split.npz written by the training run") from None


def make_split(n: int, seed: int, config: SplitConfig | None = None) -> Split:
    """Draw a :class:`Split` of ``n`` rows from ``seed``; the same arguments give the same split."""
    config = config or SplitConfig()
    if seed < 0:
        raise MiaError(f"seed must be non-negative, got {seed}")
    sizes = [int(f * n) for f in (config.member_fraction, config.nonmember_fraction, config.validation_fraction)]
    if n < 1 or min(sizes) < 1:
        raise MiaError(f"{n} rows are too few to split into members, non-members, validation and "
                       "population; use a larger dataset or larger fractions")
    perm = np.random.default_rng(seed).permutation(n)
    members, nonmembers, validation, rest = np.split(perm, np.cumsum(sizes))
    if config.max_members is not None and len(members) > config.max_members:
        members, surplus = members[:config.max_members], members[config.max_members:]
        rest = np.concatenate([rest, surplus])
    return Split(np.sort(members), np.sort(nonmembers), np.sort(validation), np.sort(rest), seed)
