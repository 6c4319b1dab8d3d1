"""Client-level local DP for federated learning: clip every upload, add Gaussian noise, account with RDP.

Each sampled client clips its update ``w_local - w_global`` to L2 norm
``max_update_norm`` (C) and adds ``N(0, (noise_multiplier * C)^2)`` noise to
every coordinate before it uploads (the DP-FedAvg mechanism of McMahan et al.
ICLR 2018, with the noise added locally). The honest-but-curious server
therefore sees only noised uploads, so each upload is protected on its own,
without secure aggregation. FedMIA's "dp" added noise without clipping or
accounting: with unbounded sensitivity that is not differential privacy at
all, and no epsilon can be reported for it. Here clipping and accounting are
the point.

Accounting. Any two clipped updates differ by at most ``2C`` in L2 norm, so
under replace-one adjacency of a record (or of the client's whole dataset;
add/remove is no better, since clipping bounds only each update's norm) one
upload is a Gaussian mechanism with effective noise multiplier
``sigma_eff = noise_multiplier / 2``. A client takes part in a round with
probability ``q`` = the fraction of clients sampled per round, and every
round is one step of the accountant; the simulation calls :meth:`ClientDP.plan`
with the number of rounds and ``q`` before round 1.

The server picks the clients and receives each upload separately, so it
knows whether a client took part: the subsample is not secret, and Poisson
subsampled-Gaussian accounting (Opacus' ``RDPAccountant(sigma_eff, q)``,
Mironov et al. 2019), whose amplification hides the sampled record among
noise-only outputs, would understate epsilon against exactly this adversary
(about 4x for sigma=4, q=0.1, 100 rounds: 2.6 instead of 10.1). A round is
instead the mixture "no upload with probability ``1 - q``, otherwise the
Gaussian mechanism" with the outcome visible, whose Renyi divergence of order
``alpha`` is exactly ``log(1 - q + q exp(alpha (alpha - 1) / (2 sigma_eff^2))) /
(alpha - 1)`` (the observed mixing variable contributes its moment, not a
blend of likelihoods). Rounds compose additively (adaptively: later global
models depend on earlier uploads), and Opacus' RDP-to-(epsilon, delta)
conversion (``opacus.accountants.analysis.rdp.get_privacy_spent``, Opacus'
default orders) gives the reported epsilon. Because the participation is
observed, only each client's marginal probability ``q = K / N`` enters: the
fixed-size client sampling of the simulation is accounted exactly, not
approximated as Poisson sampling. With ``q = 1`` this is the plain Gaussian
mechanism composed over the rounds, and equals Opacus' accountant at
``sample_rate=1``.

With ``epsilon > 0`` the noise multiplier is the smallest (within 0.01 in
epsilon, like ``opacus.accountants.utils.get_noise_multiplier``) that spends
at most ``epsilon`` over the planned rounds. The noise draws from a generator
seeded with ``(seed, round)`` on the updates' device: reproducible, and
independent of which rounds were computed before.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mia.defenses.accounting import loose_order_note
from mia.defenses.base import Defense, DefenseSpec, HyperParam, register
from mia.errors import MiaError

MAX_SIGMA = 1e4  # Opacus' get_noise_multiplier gives up at the same bound
EPSILON_TOLERANCE = 0.01


def round_generator(seed: int, round: int, device: torch.device | str, *salt: int) -> torch.Generator:
    """A generator on ``device`` seeded from ``(seed, round, *salt)``: reproducible, independent of call order."""
    state = np.random.SeedSequence([seed % 2 ** 63, round % 2 ** 63, *salt]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) >> 1)


def rdp_orders() -> list[float]:
    from opacus.accountants import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


def visible_sampling_rdp(sigma_eff: float, sample_rate: float, steps: int, orders: list[float]) -> np.ndarray:
    """RDP at ``orders`` of ``steps`` rounds of a Gaussian mechanism run with probability ``sample_rate``, the
    participation observed: ``steps * log(1 - q + q exp(a (a - 1) / (2 sigma_eff^2))) / (a - 1)``."""
    a = np.asarray(orders, dtype=np.float64)
    if steps == 0 or sample_rate == 0:
        return np.zeros_like(a)
    skip = math.log1p(-sample_rate) if sample_rate < 1 else -math.inf
    per_round = np.logaddexp(skip, math.log(sample_rate) + a * (a - 1) / (2 * sigma_eff ** 2)) / (a - 1)
    return steps * per_round


def client_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                   report: bool = False) -> float:
    """Epsilon of ``steps`` rounds of clipped, locally noised uploads (see the module docstring); ``report``:
    the epsilon a run reports, which warns where its RDP order is loose."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if steps == 0 or sample_rate == 0:
        return 0.0
    orders = rdp_orders()
    rdp = visible_sampling_rdp(noise_multiplier / 2, sample_rate, steps, orders)
    with loose_order_note("client-dp", report=report):
        return float(get_privacy_spent(orders=orders, rdp=rdp.tolist(), delta=delta)[0])


def client_noise_multiplier(epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier (to ``EPSILON_TOLERANCE``) whose epsilon is at most ``epsilon``."""
    low, high = 0.0, 10.0
    while client_epsilon(high, sample_rate, steps, delta) > epsilon:
        low, high = high, 2 * high
        if high > MAX_SIGMA:
            raise MiaError(f"client-dp cannot reach epsilon={epsilon:g} at delta={delta:g} over {steps} rounds "
                           f"(q={sample_rate:g}) with any noise: raise epsilon or delta")
    while True:
        sigma = (low + high) / 2
        eps = client_epsilon(sigma, sample_rate, steps, delta) if sigma > 0 else math.inf
        if eps > epsilon:
            low = sigma
        else:
            high = sigma
            if eps >= epsilon - EPSILON_TOLERANCE or high - low < 1e-6:
                return high


class ClientDP(Defense):
    """Upload hook: clip each update to ``max_update_norm``, add Gaussian noise; ``metrics()`` reports epsilon."""

    noise_multiplier: float
    epsilon: float
    max_update_norm: float
    delta: float

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        if self.noise_multiplier <= 0 or self.epsilon < 0 or self.max_update_norm <= 0:
            raise MiaError(f"client-dp needs noise_multiplier > 0, epsilon >= 0 and max_update_norm > 0, got "
                           f"{self.noise_multiplier}, {self.epsilon}, {self.max_update_norm}")
        if not 0 < self.delta < 1:
            raise MiaError(f"client-dp delta must be in (0, 1), got {self.delta}")
        self.sigma = float(self.noise_multiplier)
        self.sample_rate: float | None = None
        self.steps = 0

    def plan(self, rounds: int, sample_rate: float) -> None:
        """Called before round 1: ``rounds`` rounds, a fraction ``sample_rate`` of the clients sampled in each."""
        if rounds < 1 or not 0 < sample_rate <= 1:
            raise MiaError(f"client-dp plans rounds >= 1 with a client sample rate in (0, 1], got {rounds}, "
                           f"{sample_rate}")
        self.sample_rate, self.steps = float(sample_rate), 0
        if self.epsilon > 0:
            self.sigma = client_noise_multiplier(self.epsilon, self.sample_rate, rounds, self.delta)

    def upload(self, updates: torch.Tensor, clients: np.ndarray, weights: torch.Tensor, round: int,
               layers: list[slice]) -> torch.Tensor:
        if self.sample_rate is None:
            raise MiaError("client-dp accounts each round at the client sample rate: call plan(rounds, "
                           "sample_rate) before the first upload")
        self.steps += 1
        clip = self.max_update_norm
        norms = updates.float().norm(dim=1, keepdim=True)
        clipped = updates.float() * (clip / (norms + 1e-6)).clamp(max=1.0)
        generator = round_generator(self.seed, round, updates.device)
        noise = torch.randn(clipped.shape, generator=generator, device=updates.device)
        return (clipped + noise * (self.sigma * clip)).to(updates.dtype)

    def state_dict(self) -> dict:
        """The accountant's progress, checkpointed with a federated run so a resumed run accounts every round."""
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))

    def metrics(self) -> dict[str, float]:
        eps = client_epsilon(self.sigma, self.sample_rate or 0.0, self.steps, self.delta, report=True)
        return {"dp.epsilon": eps, "dp.delta": float(self.delta), "dp.noise_multiplier": self.sigma}


register(DefenseSpec(
    "client-dp", ClientDP,
    "client-level local DP (DP-FedAvg with local noise): clip each upload to max_update_norm, add Gaussian "
    "noise; RDP accounting with the client participation visible to the server; reports dp.epsilon",
    scenarios=("federated",),
    params={
        # searched as DP-SGD's: epsilon and the clipping norm (sigma is dead once epsilon > 0; delta is
        # part of the guarantee's statement, not a point on the trade-off)
        "noise_multiplier": HyperParam(float, 1.0, "Gaussian noise std over the clipping norm (sigma); "
                                       "ignored when epsilon > 0", low=0.0, open_low=True, search=False),
        "epsilon": HyperParam(float, 0.0, "target epsilon: when > 0, sigma is the smallest that spends at most "
                              "this over the planned rounds; 0 = use noise_multiplier", low=0.0, log=True,
                              search_range=(0.5, 50.0)),
        "max_update_norm": HyperParam(float, 1.0, "L2 clipping norm C of each client's update", low=0.0,
                                      open_low=True, log=True, search_range=(0.01, 10.0)),
        "delta": HyperParam(float, 1e-5, "delta of (epsilon, delta)-DP", low=1e-10, high=0.1, log=True,
                            search=False),
    }))
