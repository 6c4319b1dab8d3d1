"""CoFedMID: a coalition of trusted clients defends its members' uploads in federated learning.

CoFedMID's code is not public; this follows its abstract and artifact
appendix. ``T`` trusted clients form a coalition (the paper's "pair", T = 2,
and "half", T = N / 2) and combine three components, each switchable:

1. class-guided partition (``partition``): each round a coalition member
   trains on one class group of its local data only, so each sample shapes
   fewer of its uploads (a member-inference attack averaging over rounds sees
   the sample's signal in fewer of them);
2. utility-aware compensation (``compensation``): a UCB1 bandit per member
   picks which held-back group to recycle a ``recycle`` fraction of (its rows
   with the highest global-model loss, the most contributive ones) and is
   rewarded with how much the global model's loss on that group then dropped;
   the members also train with HAMP's anti-overconfidence loss (high-entropy
   soft labels, entropy bonus: :class:`mia.defenses.hamp.HAMP`'s loss hook);
3. aggregation-neutral perturbation (``perturb``, the source's "layadd"):
   pairs of sampled members add layer-wise masks that cancel in the weighted
   aggregate, so the global model is unchanged while every upload the server
   sees is noised.

Design decisions where the public description leaves room:

* Coalition: clients ``0 .. T-1`` (``trusted_clients = 0`` means "half",
  ``T = N // 2``, with ``N`` from :meth:`CoFedMID.clients`; refused below
  4 clients, where half is a coalition of one, as ``T = 1`` is). Audit a
  coalition member with ``--target-client`` below ``T`` (the FL default
  target client is 0, a member); other clients train and upload as usual.
* Class groups: a member's classes, in class-index order, are cut into
  ``parts`` contiguous groups balanced by row count (class ``c`` goes to group
  ``floor(parts * (rows before c + half of c's rows) / all rows)``; groups
  left empty are dropped, so a member with one class is not partitioned). In
  round ``r`` member ``i`` trains on group ``(r + i) mod parts``, so two
  members train on complementary groups in the same round; the other groups
  are held back. The labels are read from the dataset behind ``global_loss``
  (``global_loss.data.y``), the one place the federated hooks expose them.
* Bandit: one UCB1 bandit per member with one arm per class group; only the
  round's held-back groups are eligible (with ``parts = 2`` there is one, so
  the choice is forced and only the recycled rows matter). Untried eligible
  arms go first, ties are broken by a generator seeded with ``(seed, round,
  client)``. The reward is the relative drop ``(before - after) / before`` of
  the global model's mean loss on the recycled group's rows across the
  round, clipped to ``[0, 1]`` (UCB1's reward range; the relative drop keeps
  rewards comparable as the loss shrinks over training). Recycling needs the
  partition: without it nothing is held back and only the HAMP loss acts.
* Perturbation: for every pair ``(i, j)`` of the round's sampled members and
  every layer, ``m_ij ~ N(0, (noise_scale * rms)^2)`` with ``rms`` the root
  mean square of the layer over both updates; upload ``i`` gets ``+ m_ij /
  w_i`` and upload ``j`` gets ``- m_ij / w_j`` (``w``: aggregation weights),
  so ``sum_k w_k upload_k`` is unchanged (to float32 rounding, which the
  masks magnify: at ``noise_scale = 10`` they are 100-5000x the updates, and
  the aggregate moves by about 1e-5 of its size with 5 members sampled, 7e-4
  with 50; exact cancellation would need the server to sum in float64 or in
  integers, as secure aggregation does). Draws come
  from :func:`mia.defenses.client_dp.round_generator` seeded with ``(seed,
  round)``, so a resumed run perturbs exactly as an uninterrupted one. With
  fewer than two members sampled, a round is not perturbed: a lone member's
  upload reaches the server as it is (counted in
  ``cofedmid.unperturbed_uploads``; :meth:`CoFedMID.plan` warns where client
  sampling makes that common, e.g. half the rounds of a pair at
  ``--client-fraction 0.5``).
* State for resume: the bandit statistics and the counters of
  :meth:`CoFedMID.metrics`, as plain lists and numbers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from mia.defenses.base import Defense, DefenseSpec, GlobalLoss, HyperParam, register
from mia.defenses.client_dp import round_generator
from mia.defenses.hamp import HAMP
from mia.errors import MiaError
from mia.train import TrainHooks

_SALT = 7  # a stream apart from the other upload defenses' draws for the same (seed, round)


def class_groups(labels: np.ndarray, parts: int) -> list[np.ndarray]:
    """The classes of ``labels`` cut, in class-index order, into at most ``parts`` groups balanced by row count."""
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    if len(classes) == 0:
        return []
    middle = np.cumsum(counts) - counts / 2
    group = np.minimum((parts * middle / counts.sum()).astype(int), parts - 1)
    return [classes[group == g] for g in np.unique(group)]


def ucb1(counts: list[int], sums: list[float], eligible: list[int], rng: np.random.Generator) -> int:
    """UCB1 over the ``eligible`` arms: an untried one first, else the largest mean + sqrt(2 ln t / n)."""
    untried = [a for a in eligible if counts[a] == 0]
    if untried:
        return int(rng.choice(untried))
    t = sum(counts)
    scores = np.asarray([sums[a] / counts[a] + math.sqrt(2 * math.log(t) / counts[a]) for a in eligible])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return int(eligible[int(rng.choice(best))])


class CoFedMID(Defense):
    """Coalition members: class-guided rows, bandit-recycled rows, HAMP loss, and pairwise cancelling masks."""

    trusted_clients: int
    parts: int
    recycle: float
    partition: bool
    compensation: bool
    perturb: bool
    noise_scale: float
    entropy_percentile: float
    alpha: float

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if self.trusted_clients < 0 or self.parts < 2 or not 0 <= self.recycle <= 1 or self.noise_scale < 0:
            raise MiaError(f"cofedmid needs trusted_clients >= 0, parts >= 2, recycle in [0, 1] and noise_scale "
                           f">= 0, got {self.trusted_clients}, {self.parts}, {self.recycle}, {self.noise_scale}")
        if self.trusted_clients == 1:
            raise MiaError("cofedmid trusted_clients=1 is a coalition of one, whose masks have no partner to cancel "
                           "with; use 2 or more (a pair: 2), or 0 for half of the clients")
        self.hamp = HAMP(seed, entropy_percentile=self.entropy_percentile, alpha=self.alpha, modify_output=False)
        self.num_clients: int | None = None
        self.counts: list[list[int]] = []  # per member, per arm: pulls
        self.sums: list[list[float]] = []  # per member, per arm: summed rewards
        self.trained_fraction, self.member_rounds, self.perturbed_rounds = 0.0, 0, 0
        self.unperturbed_uploads = 0  # member uploads of rounds with no partner sampled: seen as they are
        self._pending: dict[int, tuple[int, np.ndarray, float]] = {}  # member -> (arm, group rows, loss before)

    # ---- the coalition

    def clients(self, num_clients: int) -> None:
        if self.trusted_clients > num_clients:
            raise MiaError(f"cofedmid trusted_clients={self.trusted_clients} exceeds the {num_clients} clients; "
                           "lower it or pass 0 for half of them")
        if self.trusted_clients == 0 and num_clients // 2 < 2:
            # half of 2 or 3 clients is a coalition of one: its masks have no partner, so it would run
            # silently unperturbed (an explicit trusted_clients=1 is refused in the constructor)
            raise MiaError(f"cofedmid trusted_clients=0 (half) of {num_clients} clients is a coalition of one, whose "
                           "masks have no partner to cancel with; use 4 or more clients, or trusted_clients=2 "
                           "(a pair)")
        self.num_clients = int(num_clients)

    def plan(self, rounds: int, sample_rate: float) -> None:
        """Warn where client sampling often leaves a sampled member without a partner (its upload unmasked)."""
        if not self.perturb or self.noise_scale == 0 or self.num_clients is None or sample_rate >= 1:
            return
        n, size = self.num_clients, self.coalition_size
        m = round(sample_rate * n)  # the clients sampled a round (the simulation passes that count over n)
        # P(none of the other size - 1 members among the m - 1 other sampled clients | this member sampled)
        alone = math.comb(n - size, m - 1) / math.comb(n - 1, m - 1)
        if alone > 0.1:
            warnings.warn(f"cofedmid: with {m} of {n} clients sampled a round, a sampled coalition member has no "
                          f"partner in about {alone:.0%} of its rounds, and such an upload reaches the server "
                          f"unperturbed (cofedmid.unperturbed_uploads counts them); raise --client-fraction or "
                          f"trusted_clients", stacklevel=2)

    @property
    def coalition_size(self) -> int:
        if self.trusted_clients > 0:
            return self.trusted_clients
        if self.num_clients is None:
            raise MiaError("cofedmid with trusted_clients=0 (half) needs the number of clients: call "
                           "clients(num_clients) first")
        return self.num_clients // 2

    def trusted(self, client: int) -> bool:
        return 0 <= client < self.coalition_size

    def _bandit(self, client: int) -> tuple[list[int], list[float]]:
        while len(self.counts) <= client:
            self.counts.append([0] * self.parts)
            self.sums.append([0.0] * self.parts)
        return self.counts[client], self.sums[client]

    # ---- 1 + 2: class-guided rows and bandit-recycled rows

    def local_rows(self, client: int, rows: np.ndarray, round: int, global_loss: GlobalLoss) -> np.ndarray:
        if not self.trusted(client) or not self.partition or len(rows) == 0:
            return rows
        labels = _labels(global_loss, rows)
        groups = class_groups(labels, self.parts)
        if len(groups) < 2:
            return rows
        active = (round + client) % len(groups)
        keep = np.isin(labels, groups[active])
        # an arm is a held-back group that would recycle at least one row: one that recycles none would
        # never be counted, stay "untried" and be pulled again every round it is held back
        held = [g for g in range(len(groups)) if g != active and self._recycled(np.isin(labels, groups[g]).sum())]
        if self.compensation and held:
            counts, sums = self._bandit(client)
            arm = ucb1(counts, sums, held, np.random.default_rng([self.seed, round, client, _SALT]))
            at = np.flatnonzero(np.isin(labels, groups[arm]))
            losses = np.asarray(global_loss(rows[at]), dtype=np.float64)
            keep[at[np.argsort(-losses, kind="stable")[:self._recycled(len(at))]]] = True
            self._pending[client] = (arm, rows[at], float(losses.mean()))
        self.trained_fraction += float(keep.mean())
        self.member_rounds += 1
        return rows[keep]

    def _recycled(self, size: int) -> int:
        """How many of a held-back group's ``size`` rows the bandit's pull recycles (rounded half up)."""
        return math.floor(self.recycle * size + 0.5)

    def client_hooks(self, client: int) -> TrainHooks:
        return self.hamp if self.compensation and self.trusted(client) else TrainHooks()

    def after_round(self, round: int, global_loss: GlobalLoss) -> None:
        for client, (arm, group_rows, before) in sorted(self._pending.items()):
            after = float(np.mean(global_loss(group_rows)))
            counts, sums = self._bandit(client)
            counts[arm] += 1
            sums[arm] += float(np.clip((before - after) / max(before, 1e-12), 0.0, 1.0))
        self._pending.clear()

    # ---- 3: aggregation-neutral perturbation

    def upload(self, updates: torch.Tensor, clients: np.ndarray, weights: torch.Tensor, round: int,
               layers: list[slice]) -> torch.Tensor:
        members = [k for k, c in enumerate(clients) if self.trusted(int(c))]
        if not self.perturb or self.noise_scale == 0:
            return updates
        if len(members) < 2:
            self.unperturbed_uploads += len(members)
            return updates
        generator = round_generator(self.seed, round, updates.device, _SALT)
        out = updates.float().clone()
        for a, i in enumerate(members):
            for j in members[a + 1:]:
                for layer in layers or [slice(0, updates.shape[1])]:
                    pair = updates[[i, j], layer].float()
                    if pair.numel() == 0:
                        continue
                    rms = pair.pow(2).mean().sqrt()
                    mask = torch.randn(pair.shape[1], generator=generator, device=updates.device) \
                        * (self.noise_scale * rms)
                    out[i, layer] += mask / weights[i]
                    out[j, layer] -= mask / weights[j]
        self.perturbed_rounds += 1
        return out.to(updates.dtype)

    # ---- resume and report

    def state_dict(self) -> dict:
        return {"counts": [list(c) for c in self.counts], "sums": [list(s) for s in self.sums],
                "trained_fraction": self.trained_fraction, "member_rounds": self.member_rounds,
                "perturbed_rounds": self.perturbed_rounds, "unperturbed_uploads": self.unperturbed_uploads}

    def load_state_dict(self, state: dict) -> None:
        self.counts = [[int(n) for n in c] for c in state.get("counts", [])]
        self.sums = [[float(s) for s in row] for row in state.get("sums", [])]
        self.trained_fraction = float(state.get("trained_fraction", 0.0))
        self.member_rounds = int(state.get("member_rounds", 0))
        self.perturbed_rounds = int(state.get("perturbed_rounds", 0))
        self.unperturbed_uploads = int(state.get("unperturbed_uploads", 0))

    def metrics(self) -> dict[str, float]:
        size = self.coalition_size if self.trusted_clients > 0 or self.num_clients is not None else 0
        fraction = self.trained_fraction / self.member_rounds if self.member_rounds else 1.0
        return {"cofedmid.trusted_clients": float(size), "cofedmid.trained_fraction": fraction,
                "cofedmid.perturbed_rounds": float(self.perturbed_rounds),
                "cofedmid.unperturbed_uploads": float(self.unperturbed_uploads)}


def _labels(global_loss: GlobalLoss, rows: np.ndarray) -> np.ndarray:
    """The class labels of ``rows``, from the dataset the global loss evaluates (see the module docstring)."""
    data = getattr(global_loss, "data", None)
    if data is None:
        raise MiaError("cofedmid's class-guided partition reads the labels from global_loss.data: pass the "
                       "simulation's GlobalLoss, or partition=false")
    idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=data.y.device)
    return data.y[idx].cpu().numpy()


register(DefenseSpec(
    "cofedmid", CoFedMID,
    "CoFedMID: a coalition of trusted clients (0..T-1) trains on class-guided parts of its data, recycles "
    "high-loss held-back rows chosen by a bandit with a HAMP loss, and adds pairwise masks that cancel in "
    "the aggregate",
    scenarios=("federated",),
    params={
        "trusted_clients": HyperParam(int, 2, "coalition size T (clients 0..T-1), not 1; 0 = half of the clients",
                                      low=0, search=False),  # the scenario (pair, half), not a knob
        "parts": HyperParam(int, 2, "class groups a member's data is cut into (one trained per round)",
                            low=2, search_range=(2, 10)),
        "recycle": HyperParam(float, 0.25, "fraction of the bandit's held-back group recycled (its highest-loss "
                                           "rows)", low=0.0, high=1.0, search_range=(0.0, 1.0)),
        "partition": HyperParam(bool, True, "class-guided partition of the members' data",
                                choices=(False, True)),
        "compensation": HyperParam(bool, True, "bandit recycling of held-back rows and the HAMP loss for "
                                               "members", choices=(False, True)),
        "perturb": HyperParam(bool, True, "pairwise layer-wise masks that cancel in the aggregate",
                              choices=(False, True)),
        "noise_scale": HyperParam(float, 10.0, "mask std over the pair's layer rms (the masks cancel in the "
                                  "aggregate, so a large scale costs no accuracy)", low=0.0,
                                  search_range=(0.0, 100.0)),
        "entropy_percentile": HyperParam(float, 0.8, "entropy of the members' soft labels as a fraction of log C "
                                                     "(HAMP's gamma)", low=0.0, high=1.0, open_low=True,
                                               search_range=(0.5, 0.99)),
        "alpha": HyperParam(float, 0.01, "weight of the members' entropy regularizer (HAMP's alpha)",
                            low=0.0, log=True, search_range=(1e-4, 0.1)),
    }))
