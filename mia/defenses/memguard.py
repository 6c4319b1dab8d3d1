"""MemGuard (Jia et al., CCS 2019): perturb each released confidence vector so that an attack model is fooled.

The model trains normally (the one loop). The defender then trains its own
membership classifier ``g`` (a small MLP on the descending-sorted softmax,
the feature map of the ``nn`` attack and of the paper's attack models), with
members = the defender's training rows and non-members = its validation rows
(``val_idx``: data the defender holds and did not train on; the evaluation
non-members are never used). ``g`` is balanced by subsampling the larger side.

At query time, :class:`MemGuardModel` runs the paper's phase I (Algorithm 1)
on every row of a batch at once: starting from the logits ``z``, gradient
steps on a perturbation of the logits minimize

    |g(softmax(z')) - 0.5| + c2 * relu(max_{j != y} z'_j - z'_y) + c3 * ||softmax(z') - softmax(z)||_1

with normalized gradients (step ``beta``), until ``g`` crosses 0.5 with the
label ``y`` (the original argmax) kept, at most ``max_iter`` steps; then again
with ``c3`` ten times larger, keeping the last success (a smaller distortion
that still fools ``g``), as in the authors' code (c1 = 1, c2 = 10, c3 from 0.1
to 1e5, beta = 0.1, 300 steps). Rows that never succeed keep their output.

Choices where the paper leaves room:

* phase II (the utility budget): the paper adds the found noise ``r`` with
  probability ``min(1, epsilon / ||r||_1)`` so that the *expected* L1
  distortion is at most ``epsilon``. Here the release is deterministic and
  the budget holds for every query: where ``||r||_1 > epsilon`` the output is
  ``s + (epsilon / ||r||_1) r``, the point of the segment from ``s`` to
  ``s + r`` at distance ``epsilon`` (a probability vector with the same
  argmax, since both ends have it). Deterministic answers also stop an
  attacker from averaging repeated queries.
* the search runs in float64, so memorized rows whose float32 softmax would
  saturate still get gradients; the defender reads the sorted softmax
  unstandardized (:class:`DefenderModel` says why).
* the label is the network's own argmax and never changes
  (:func:`mia.defenses.masking.keep_label` guards float ties).

What to expect: each row stops just past the defender's 0.5, so an attack
close to the defender (``nn``) is pushed past chance (AUC below 0.5: an
adaptive attacker flips it), while threshold attacks on the loss or entropy
lose less, as Song & Mittal (USENIX Security 2021) observed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia.attacks._train import fit_binary, init_seeded
from mia.data.base import Dataset
from mia.defenses.base import Defense, DefenseSpec, EpochCallback, HyperParam, ModelFactory, register
from mia.defenses.masking import keep_label
from mia.errors import MiaError
from mia.train import TrainConfig, TrainResult, predict_logits, train

C1, C2, C3_START, C3_MAX, BETA = 1.0, 10.0, 0.1, 1e5, 0.1
"""The authors' constants: loss weights, the c3 search range, the gradient step on the logits."""

DEFENDER_EPOCHS, DEFENDER_HIDDEN, DEFENDER_LR = 200, 64, 1e-3
"""The defender's attack model: epochs over its (few) rows, hidden width, Adam learning rate."""


class DefenderModel(nn.Module):
    """The defender's membership classifier on the sorted softmax; outputs P(member).

    The probabilities are not standardized: standardizing would divide the
    tiny tail probabilities by their tiny spread, and the search would then
    fool the defender by moving mass no attacker looks at (measured: the
    ``nn`` attack's AUC stayed at 0.89 of 0.91 that way, against 0.76 here, on 100 classes).
    """

    def __init__(self, num_classes: int, hidden: int = DEFENDER_HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    @staticmethod
    def features(probs: torch.Tensor) -> torch.Tensor:
        return probs.sort(-1, descending=True).values

    def logit(self, probs: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(probs)).squeeze(-1)

    def on_sorted(self, sorted_probs: torch.Tensor) -> torch.Tensor:
        """P(member) of probabilities already sorted in descending order (MemGuard's search keeps them so)."""
        return torch.sigmoid(self.net(sorted_probs).squeeze(-1))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.on_sorted(self.features(probs))


def train_defender(member_logits: torch.Tensor, nonmember_logits: torch.Tensor, seed: int) -> DefenderModel:
    """Fit the defender's classifier on balanced member/non-member softmax outputs (float64 after fitting)."""
    k = min(len(member_logits), len(nonmember_logits))
    if k < 2:
        raise MiaError("memguard needs validation rows as the defender's non-members (at least 2); pass val_idx")
    rng = np.random.default_rng([seed, 3])
    members = member_logits[torch.as_tensor(np.sort(rng.choice(len(member_logits), k, replace=False)))]
    nonmembers = nonmember_logits[torch.as_tensor(np.sort(rng.choice(len(nonmember_logits), k, replace=False)))]
    probs = torch.softmax(torch.cat([members, nonmembers]).double(), -1).cpu()
    model = init_seeded(lambda: DefenderModel(probs.shape[1]), seed)
    is_member = np.r_[np.ones(k), np.zeros(k)]
    fit_binary(_Logit(model), probs.float(), is_member, epochs=DEFENDER_EPOCHS, lr=DEFENDER_LR, seed=seed,
               batch_size=128)
    return model.double().eval().requires_grad_(False)


class _Logit(nn.Module):
    """The defender seen as features -> member logit, what :func:`fit_binary` trains."""

    def __init__(self, model: DefenderModel):
        super().__init__()
        self.model = model

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.model.logit(probs)[:, None]


def memguard_probs(logits: torch.Tensor, defender: DefenderModel, epsilon: float, max_iter: int) -> torch.Tensor:
    """MemGuard's released probabilities (float64) for a batch of logits; see the module docstring.

    Every row searches at once and at its own pace: a row that fools the
    defender keeps that answer and restarts from its logits with ``c3`` ten
    times larger; a row whose round fails (``max_iter`` steps) or that passed
    ``c3 = 1e5`` stops and keeps its last success. Only rows still searching
    are computed, so one batch costs about as many steps as its slowest row.

    The defender reads sorted probabilities, and a full sort of every row at
    every step was most of the search's time. Softmax keeps the order of the
    logits, and a step of size ``beta`` rarely reorders them, so each row
    keeps its descending order ``order`` and re-sorts only when its gathered
    logits are no longer descending: the same sorted values as a sort, at the
    cost of a gather (1.4x faster searches, identical answers: `benchmarks/memguard_search.py`).

    Answers are deterministic for a given batch, but the search amplifies
    rounding, and a batched matmul rounds a row differently with other row
    counts: the same row queried in another batch can come back up to about
    0.01 away in L1 (measured on 100 classes), far inside ``epsilon``.
    """
    z0 = logits.detach().double()
    s0 = torch.softmax(z0, -1)
    label = z0.argmax(-1)
    with torch.no_grad():
        h0 = defender(s0)
    best = s0.clone()
    rows = ((h0 - 0.5).abs() > 1e-5).nonzero().squeeze(1)  # rows already at 0.5 need nothing
    # The searching rows' state, compacted whenever rows stop (no indexing of the whole batch per step).
    st = {"row": rows, "z0": z0[rows], "s0": s0[rows], "label": label[rows, None],
          "is_label": F.one_hot(label[rows], z0.shape[-1]).bool(), "side": torch.sign(h0[rows] - 0.5),
          "c3": torch.full_like(h0[rows], C3_START), "steps": torch.zeros_like(rows),
          "order": z0[rows].argsort(-1, descending=True)}
    st["z"] = st["z0"].clone()
    while len(st["row"]):
        z, order = st["z"], st["order"]
        ranked = z.gather(-1, order)
        stale = (ranked[:, 1:] > ranked[:, :-1]).any(-1)
        if stale.any():
            order[stale] = z[stale].argsort(-1, descending=True)
        z = z.requires_grad_(True)
        with torch.enable_grad():
            p = torch.softmax(z, -1)
            h = defender.on_sorted(p.gather(-1, order))
            wrong = z.masked_fill(st["is_label"], -torch.inf).amax(-1)
            right = z.gather(-1, st["label"]).squeeze(-1)
            loss = C1 * (h - 0.5).abs() + C2 * F.relu(wrong - right) + st["c3"] * (p - st["s0"]).abs().sum(-1)
            (grad,) = torch.autograd.grad(loss.sum(), z)
        z, p = z.detach(), p.detach()
        success = ((h.detach() - 0.5) * st["side"] <= 0) & (z.argmax(-1) == st["label"].squeeze(-1))
        best[st["row"][success]] = p[success]
        # a success tries again from the start with c3 ten times larger, for a smaller distortion
        st["c3"] = torch.where(success, st["c3"] * 10.0, st["c3"])
        step = BETA * (grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-300))
        st["z"] = torch.where(success[:, None], st["z0"], z - step)
        st["steps"] = torch.where(success, 0, st["steps"] + 1)
        keep = torch.where(success, st["c3"] <= C3_MAX, st["steps"] < max_iter)
        if not keep.all():
            st = {k: v[keep] for k, v in st.items()}
    return within_budget(s0, best, epsilon)


def within_budget(s0: torch.Tensor, s1: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``s1`` moved back towards ``s0`` along the segment until ``||s1 - s0||_1 <= epsilon``."""
    dist = (s1 - s0).abs().sum(-1, keepdim=True)
    scale = torch.clamp(epsilon / dist.clamp_min(1e-300), max=1.0)
    return s0 + scale * (s1 - s0)


class MemGuardModel(nn.Module):
    """The released model: the network's outputs after MemGuard, as log-probabilities."""

    def __init__(self, model: nn.Module, defender: DefenderModel, epsilon: float, max_iter: int):
        super().__init__()
        self.model, self.defender = model, defender
        self.epsilon, self.max_iter = epsilon, max_iter

    @property
    def label_model(self) -> nn.Module:
        """A model with exactly the released labels, without the search (for label-only signals)."""
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x).float()
        with torch.autocast(x.device.type, enabled=False):  # the search runs in float64
            probs = memguard_probs(logits, self.defender.to(logits.device), self.epsilon, self.max_iter)
        return keep_label(probs.clamp_min(1e-30).log().float(), logits.argmax(-1))


class MemGuard(Defense):
    """Normal training, a defender's attack model, and MemGuard's perturbed releases (module docstring)."""

    epsilon: float
    max_iter: int

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if self.epsilon <= 0 or self.max_iter < 1:
            raise MiaError(f"memguard needs epsilon > 0 and max_iter >= 1, got epsilon={self.epsilon}, "
                           f"max_iter={self.max_iter}")
        self.defender: DefenderModel | None = None

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        model = make_model()
        result = train(model, data, train_idx, val_idx, config, on_epoch=on_epoch, progress=progress)
        members = predict_logits(model, data, train_idx, device=config.device)
        nonmembers = predict_logits(model, data, val_idx, device=config.device)
        self.defender = train_defender(members, nonmembers, self.seed)
        return model, result

    def release(self, model: nn.Module) -> nn.Module:
        if self.defender is None:
            raise MiaError("memguard releases a model it trained itself: call fit before release")
        return MemGuardModel(model, self.defender, self.epsilon, self.max_iter)


register(DefenseSpec(
    "memguard", MemGuard,
    "MemGuard (Jia et al. 2019): perturb each confidence vector, label kept, within an L1 budget, so that "
    "the defender's own attack model answers 0.5",
    scenarios=("centralized", "pruning"),
    params={
        "epsilon": HyperParam(float, 1.0, "L1 budget on the change of each released probability vector "
                              "(2 = unbounded)", low=0.0, high=2.0, open_low=True,
                              search_range=(0.1, 2.0)),
        "max_iter": HyperParam(int, 300, "gradient steps per round of the perturbation search", low=1,
                               search=False),  # how well the search converges
    }))
