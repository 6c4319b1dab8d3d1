"""Reference-attack scoring speed: ``mia``'s vectorized LiRA and RMIA against per-sample loops.

Synthetic float16 ``phi`` of M = 64 reference models on N = 50,000 audited
samples and Z = 25,000 population samples, V = 18 query views (the LiRA
paper's CIFAR-10 setting), an online pool (each sample IN for a random half
of the models). Timed, in the same process:

* ``mia``: ``run_attack(name, ..., reference=...)`` end to end: input
  checks, the pseudo-target calibration (thresholds; RMIA's a and gamma
  search), and the scores of all N samples;
* baseline: the official LiRA code's structure (``plot.py``): a Python loop
  over samples, ``np.median`` / ``np.std`` over that sample's IN and OUT
  models, ``scipy.stats.norm.logpdf`` / ``logcdf``; for RMIA, a loop over
  samples computing ``Pr(x)`` and the pairwise comparison with every ``z``.
  The baseline runs on ``--naive-samples`` samples and is extrapolated
  linearly to N; it does no calibration, so the ratio favours it.

The result replaces this script's section of ``benchmarks/RESULTS.md``
(other sections are kept).

    python benchmarks/attack_scoring.py [--samples N] [--models M] [--views V]
        [--population Z] [--naive-samples n] [--repeats r] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, device_name, write_section  # noqa: E402

from mia.attacks import ReferenceSignals, run_attack  # noqa: E402
from mia.signals import Signals  # noqa: E402

HEADING = "## Reference-attack scoring, LiRA and RMIA (CPU)"
GOAL_SECONDS = 2.0
CASES = [("lira-online", {"variance": "per-example"}), ("lira-online", {"variance": "fixed"}),
         ("lira-offline", {"variance": "per-example"}), ("lira-offline", {"variance": "fixed"}),
         ("rmia", {"mode": "online"}), ("rmia", {"mode": "offline"}),
         ("rmia", {"mode": "auto"})]  # the default: mode, temperature, a and gamma chosen on the references


def synthetic_pool(n: int, z: int, m: int, v: int, seed: int = 0) -> tuple[Signals, ReferenceSignals]:
    """A memorizing model's pool: per-sample difficulty, +1.5 logit for models that trained on it."""
    rng = np.random.default_rng(seed)

    def phi(k: int, inc: np.ndarray) -> np.ndarray:
        mu = rng.normal(2.0, 2.0, k).astype(np.float32)
        out = np.empty((inc.shape[0], k, v), dtype=np.float16)
        for i in range(inc.shape[0]):  # one model at a time keeps the float64 temporaries small
            noise = rng.standard_normal((k, v), dtype=np.float32)
            out[i] = mu[:, None] + noise + 1.5 * inc[i][:, None]
        return out

    inc = rng.random((m, n)) < 0.5
    pop_inc = rng.random((m, z)) < 0.5
    member = rng.random(n) < 0.5
    ref = ReferenceSignals(target_phi=phi(n, member[None])[0].astype(np.float32), phi=phi(n, inc),
                           inclusion=inc, population_target_phi=phi(z, np.zeros((1, z), bool))[0]
                           .astype(np.float32), population_phi=phi(z, pop_inc), population_inclusion=pop_inc)
    logits = np.stack([ref.target_phi[:, 0], np.zeros(n, np.float32)], axis=1)
    return Signals(logits, np.zeros(n, np.int64), None, ref.target_phi), ref


# ---------------------------------------------------------------- baseline


def naive_lira(ref: ReferenceSignals, idx: np.ndarray, online: bool, fixed: bool) -> np.ndarray:
    """Per-sample loop in the official code's style (median location, np.std scale, scipy.stats)."""
    norm = scipy.stats.norm
    inc = ref.inclusion
    if fixed:  # one pooled scale per side, itself from a loop over the same samples
        res_in, res_out = [], []
        for n in idx:
            x = ref.phi[:, n].astype(np.float32)
            for mask, res in ((inc[:, n], res_in), (~inc[:, n], res_out)):
                if mask.sum() >= 2:
                    res.append(((x[mask] - x[mask].mean(0)) ** 2).ravel())
        sd_in, sd_out = np.sqrt(np.concatenate(res_in).mean()), np.sqrt(np.concatenate(res_out).mean())
    scores = np.empty(len(idx))
    for i, n in enumerate(idx):
        x = ref.phi[:, n].astype(np.float32)
        t = ref.target_phi[n]
        dat_out = x[~inc[:, n]]
        mu_out, s_out = np.median(dat_out, 0), (sd_out if fixed else dat_out.std(0) + 1e-30)
        if online:
            dat_in = x[inc[:, n]]
            mu_in, s_in = np.median(dat_in, 0), (sd_in if fixed else dat_in.std(0) + 1e-30)
            scores[i] = (norm.logpdf(t, mu_in, s_in) - norm.logpdf(t, mu_out, s_out)).mean()
        else:
            scores[i] = norm.logcdf(t, mu_out, s_out).mean()
    return scores


def naive_rmia(ref: ReferenceSignals, idx: np.ndarray, a: float = 0.3, gamma: float = 1.0,
               offline: bool = False) -> tuple[np.ndarray, float]:
    """Per-sample loops: Pr(x) per sample, then r(x) / r(z) > gamma against every z.

    Returns the scores of ``idx`` and the seconds spent on the ``z`` side
    (computed for all Z once, not extrapolated).
    """
    def sigmoid(x):
        return 1 / (1 + np.exp(-x.astype(np.float64)))

    def prior(phi_models, inc_col):
        p = sigmoid(phi_models).mean(axis=-1)
        if not offline:
            return p.mean()
        return ((1 + a) * p[~inc_col].mean() + (1 - a)) / 2

    start = time.perf_counter()
    z = ref.population_target_phi.shape[0]
    r_z = np.array([sigmoid(ref.population_target_phi[j]).mean()
                    / prior(ref.population_phi[:, j], ref.population_inclusion[:, j]) for j in range(z)])
    z_seconds = time.perf_counter() - start
    scores = np.empty(len(idx))
    for i, n in enumerate(idx):
        r_x = sigmoid(ref.target_phi[n]).mean() / prior(ref.phi[:, n], ref.inclusion[:, n])
        scores[i] = np.mean(r_x / r_z > gamma)
    return scores, z_seconds


def time_naive(name: str, params: dict, ref: ReferenceSignals, n_naive: int) -> float:
    """Baseline seconds for all N samples, extrapolated from ``n_naive`` of them."""
    n = ref.target_phi.shape[0]
    idx = np.random.default_rng(1).choice(n, size=min(n_naive, n), replace=False)
    start = time.perf_counter()
    if name == "rmia":
        _, z_seconds = naive_rmia(ref, idx, offline=params["mode"] == "offline")
        x_seconds = time.perf_counter() - start - z_seconds
        return z_seconds + x_seconds * n / len(idx)
    naive_lira(ref, idx, online=name == "lira-online", fixed=params["variance"] == "fixed")
    return (time.perf_counter() - start) * n / len(idx)


def time_mia(name: str, params: dict, target: Signals, ref: ReferenceSignals, repeats: int) -> float:
    """Median seconds of ``run_attack`` end to end (calibration included) over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_attack(name, target, [], params, reference=ref)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ---------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--views", type=int, default=18)
    parser.add_argument("--population", type=int, default=25_000)
    parser.add_argument("--naive-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    target, ref = synthetic_pool(args.samples, args.population, args.models, args.views)
    run_attack("global-threshold", target, [], reference=ref)  # warm-up: imports, page faults
    rows = []
    for name, params in CASES:
        fast = time_mia(name, params, target, ref, args.repeats)
        slow = time_naive(name, params, ref, args.naive_samples)
        label = f"{name} ({', '.join(f'{k}={v}' for k, v in params.items())})"
        rows.append((label, fast, slow))
        print(f"{label:40s} mia {fast:6.2f} s   baseline {slow:8.1f} s   {slow / fast:6.0f}x", flush=True)

    table = "\n".join(f"| {label} | {fast:.2f} | {slow:.1f} | {slow / fast:.0f}x | "
                      f"{'yes' if fast < GOAL_SECONDS else 'no'} |" for label, fast, slow in rows)
    text = (
        f"- date: {dt.date.today().isoformat()}\n- device: {device_name()}\n"
        f"- numpy {np.__version__}, scipy {scipy.__version__}, python {platform.python_version()}\n"
        f"- data: synthetic float16 phi, M={args.models} reference models (online pool), "
        f"N={args.samples} audited samples, Z={args.population} population samples, V={args.views} views\n"
        f"- mia: median of {args.repeats} end-to-end `run_attack` calls (checks, pseudo-target "
        "calibration of the threshold and of RMIA's mode/temperature/a/gamma, scoring)\n"
        f"- baseline: per-sample loop in the official LiRA code's style (np.median, np.std, "
        f"scipy.stats.norm) / per-sample RMIA with the pairwise comparison against every z, on "
        f"{args.naive_samples} samples extrapolated to N (no calibration)\n"
        f"- 1-minute load average at start: {load:.1f} (other processes share the machine)\n"
        f"- command: `python benchmarks/attack_scoring.py`\n\n"
        f"| attack | mia s | baseline s | ratio | under {GOAL_SECONDS:g} s |\n"
        "| --- | ---: | ---: | ---: | :---: |\n" + table + "\n")
    if not args.no_write:
        write_section(HEADING, text)
        print(f"written to {RESULTS}")
    else:
        print(text)


if __name__ == "__main__":
    main()
