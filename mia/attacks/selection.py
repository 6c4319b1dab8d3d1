"""Which attacks run on a target: their names, parameters and applicability, checked before anything trains.

The CLI, the Python API and the Optuna objective name attacks as ``all`` or a
list; :func:`check_attacks` turns that into the FL and black-box attacks a
target runs and refuses, in one line, every mistake a name or parameter can
carry (an unknown or misspelt name, a parameter the attack lacks, label-only
signals the target was not trained with, an online-only attack on an offline
pool), so that no mistake surfaces after minutes of training. Under ``all``,
:func:`applicable` leaves out instead what does not apply to the target.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

from mia.attacks.base import ATTACKS, resolve_params
from mia.data.datasets import DATASETS
from mia.defenses import make_defense
from mia.errors import PLUGIN_HINT, MiaError, unknown
from mia.fl.attacks import FL_ATTACKS, LAST_SAMPLED
from mia.label_signals import DEFAULT_LABEL_ONLY

if TYPE_CHECKING:
    from mia.audit import TargetConfig
    from mia.data import Dataset
    from mia.signals import Signals


def as_asked(attacks: str | list[str]) -> str | list[str]:
    """``"all"`` for every spelling of it (``" all"``, ``"ALL"``, ``["all"]``), else ``attacks`` as given: callers
    treat ``all`` differently from a list naming every attack (inapplicable ones are left out, not refused)."""
    if isinstance(attacks, str):
        return "all" if attacks.strip().lower() == "all" else attacks
    return "all" if [str(a).strip().lower() for a in attacks] == ["all"] else list(attacks)


def resolve_attacks(names: str | list[str], scenario: str = "centralized") -> list[str]:
    """``"all"`` or a comma-separated list -> validated attack names, registry order.

    A federated target also has the FL attacks (:data:`mia.fl.attacks.FL_ATTACKS`),
    listed first under ``all``.
    """
    known = ATTACKS.names()
    if scenario == "federated":
        known = FL_ATTACKS.names() + known
    if isinstance(names, str):
        names = known if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise MiaError("no attacks given; pass --attacks all or a comma-separated list (see `mia attacks`)")
    by_lower = {k.lower(): k for k in known}
    names = [n if n in known else by_lower.get(n.lower(), n) for n in names]  # LOSS, Lira-Online: spelt as known
    for name in names:
        if name not in known:
            if scenario != "federated" and name in FL_ATTACKS.names():
                raise MiaError(f"attack {name!r} reads the rounds of a federated run (FedMIA) and this "
                               f"target is {scenario}; use it on a --scenario federated run")
            raise MiaError(f"{unknown('attack', name, known)}{PLUGIN_HINT}")
    return list(dict.fromkeys(names))


def label_only_kind(name: str, params: dict[str, dict] | None = None) -> str | None:
    """The label-only signal attack ``name`` reads with its parameters (``boundary`` with
    ``mode=white-box`` reads ``boundary-wb``), or None for other attacks."""
    spec = ATTACKS.get(name) if name in ATTACKS else None
    if spec is None or spec.family != "label-only":
        return None
    return spec.cls(**resolve_params(spec, (params or {}).get(name)), seed=0).kind


def check_label_only(names: list[str], config: TargetConfig, params: dict[str, dict] | None = None) -> None:
    """Named label-only attacks need data their signals exist for: checked before anything trains (under
    ``all`` they are left out instead, :func:`applicable`)."""
    for name in names:
        kind = label_only_kind(name, params)
        if kind is not None:
            _check_kind_fits(kind, config, f"attack {name!r} needs {kind!r} signals, which exist")


def check_label_only_kinds(config: TargetConfig) -> None:
    """The label-only kinds a user asks training for (``--label-only``) exist for its data: one that cannot
    was accepted, logged, and never computed, and the attack reading it failed later."""
    for kind in config.label_only:
        _check_kind_fits(kind, config, f"label-only signals {kind!r} (--label-only) exist")


def _check_kind_fits(kind: str, config: TargetConfig, subject: str) -> None:
    """A one-line error, ``subject`` first, where signal ``kind`` cannot exist for ``config``'s data."""
    data_kind = DATASETS.get(config.dataset).kind
    if not _kind_fits(kind, data_kind):
        what = "image data" if kind == "aug" else "binary tabular data"
        raise MiaError(f"{subject} for {what} only; {config.dataset} is {data_kind}")


def label_only_for(config: TargetConfig, asked: str | list[str] = "all",
                   params: dict[str, dict] | None = None) -> TargetConfig:
    """``config`` with the label-only signals that the attacks ``asked`` read added to its ``label_only``.

    Label-only signals are costly (``noise-flip`` alone was 5 of the 7 minutes of Purchase100's target
    signals, computed by default in audits that ran no label-only attack), so they are computed where an
    attack will read them: ``all`` reads :data:`mia.label_signals.DEFAULT_LABEL_ONLY` (the boundary
    searches, hundreds of queries a row, are named), a list the kinds of its label-only attacks
    (``boundary`` with ``mode=white-box`` reads ``boundary-wb``). ``mia audit`` computes them in training;
    ``mia attack`` computes those its target lacks from the checkpoint. Kinds that cannot apply to the data
    are left out here and refused by :func:`check_label_only` when named.
    """
    data_kind = DATASETS.get(config.dataset).kind
    if asked == "all":
        read = list(DEFAULT_LABEL_ONLY)
    else:
        names = resolve_attacks(asked, config.scenario)
        check_attack_params(params, names, config)
        read = [kind for kind in (label_only_kind(n, params) for n in names) if kind is not None]
    kinds = [*config.label_only, *(kind for kind in read if _kind_fits(kind, data_kind))]
    return replace(config, label_only=list(dict.fromkeys(kinds)))


def _kind_fits(kind: str, data_kind: str) -> bool:
    """Whether label-only signal ``kind`` can exist for ``data_kind`` data (``aug`` images, ``noise-flip``
    tabular rows, the boundary any)."""
    return {"aug": "image", "noise-flip": "tabular"}.get(kind, data_kind) == data_kind


def check_label_only_data(asked: str | list[str], names: list[str], data: Dataset,
                          params: dict[str, dict] | None = None) -> None:
    """A named ``noise-flip`` attack on tabular rows that are not all 0/1 fails once the data is loaded,
    before any reference model trains: its signals are left out of such data, so it failed after the whole
    pool, saying to train with the ``--label-only noise-flip`` the target had. Under ``all`` it is left
    out instead (:func:`applicable`)."""
    if asked == "all" or data.kind != "tabular" or not any(label_only_kind(n, params) == "noise-flip" for n in names):
        return
    if not bool(((data.x == 0) | (data.x == 1)).all()):
        raise MiaError(f"attack 'noise-flip' flips bits of binary tabular rows, but {data.name}'s features are not "
                       "all 0 or 1; leave it out of --attacks (boundary works on any data)")


def check_attack_params(params: dict[str, dict] | None, names: list[str], config: TargetConfig) -> None:
    """Every ``--attack-param`` names an attack among ``names`` and parameters it has: checked before
    anything trains (a misspelt parameter used to fail after the reference pool; a parameter of an
    attack not run was logged as if applied); and what only the target's ``config`` decides:
    ``selena-adaptive``'s ``1 <= l < k``, and an FL attack's ``round`` (recorded, with the
    target client sampled in it), which failed after the training they would have wasted."""
    for name, given in (params or {}).items():
        if not isinstance(given, dict):
            raise MiaError(f"attack parameters go by attack, as {{'loss': {{'thresholds': 'global'}}}}; "
                           f"got {name!r}: {given!r}")
        if name not in names:
            raise MiaError(f"attack parameter {name}.{next(iter(given), '')} (--attack-param) is set, but attack "
                           f"{name!r} is not among the attacks run ({', '.join(names)})")
        if name in ATTACKS:
            spec = ATTACKS.get(name)
            resolved = resolve_params(spec, given)
            spec.cls(**resolved, seed=0)  # constructors check values (thresholds=bogus)
        else:
            resolved = resolve_params(FL_ATTACKS.get(name), given)
        if name == "selena-adaptive":
            shadow_split(config, resolved)
        if resolved.get("round", LAST_SAMPLED) != LAST_SAMPLED and config.fl is not None:
            r, recorded = resolved["round"], config.fl.recorded_rounds().tolist()
            if r not in recorded:
                raise MiaError(f"{name} round={r} is not a recorded round; recorded rounds: {recorded}")
            if config.fl.target_client not in config.fl.sampled(r, config.seed):
                raise MiaError(f"{name} round={r}: client {config.fl.target_client} was not sampled in that round; "
                               f"pick another round or round=-1 (the last it was sampled in)")


#: Attacks that need reference models trained on the audited samples.
ONLINE_ONLY = ("lira-online",)


def attacks_for_pool(names: list[str], asked: str | list[str], pool_mode: str,
                     params: dict[str, dict] | None = None) -> list[str]:
    """Drop online-only attacks from ``all`` under an offline pool; refuse them when named, and
    ``rmia mode=online`` (offline pools choose RMIA's offline mode, :meth:`mia.attacks.reference.Rmia.fit`)."""
    if pool_mode == "online":
        return names
    named = [n for n in names if n in ONLINE_ONLY]
    if "rmia" in names and resolve_params(ATTACKS.get("rmia"), (params or {}).get("rmia")).get("mode") == "online":
        named.append("rmia mode=online")
    if named and (asked != "all" or "rmia mode=online" in named):
        raise MiaError(f"{', '.join(named)} needs reference models trained on the audited samples; "
                       "use the online pool (pool_mode online, --pool online)")
    for name in named:
        warnings.warn(f"{name} left out: it needs reference models trained on the audited samples, and the "
                      "pool is offline", stacklevel=2)
    return [n for n in names if n not in ONLINE_ONLY]


def check_attacks(asked: str | list[str], config: TargetConfig, params: dict[str, dict] | None = None,
                  pool_mode: str = "online") -> tuple[list[str], list[str]]:
    """The FL and the black-box attacks that ``asked`` (:func:`as_asked`'s form) runs on this target.

    Everything a name can get wrong is checked here, before anything trains:
    the names, their parameters (:func:`check_attack_params`), the label-only
    signals a named attack reads (:func:`check_label_only`) and the pool mode
    (:func:`attacks_for_pool`).
    """
    everything = resolve_attacks(asked, config.scenario)
    check_attack_params(params, everything, config)
    if asked != "all":
        check_label_only(everything, config, params)
    fl_names = [n for n in everything if n not in ATTACKS]
    return fl_names, attacks_for_pool([n for n in everything if n in ATTACKS], asked, pool_mode, params)


def applicable(names: list[str], target: Signals, defense: str = "none",
               params: dict[str, dict] | None = None) -> list[str]:
    """``names`` without the attacks that do not apply to this data and defense.

    ``aug`` needs images and ``noise-flip`` binary features; ``selena-adaptive``
    (which trains a shadow Split-AI) is aimed at ``selena`` targets. Under
    ``--attacks all`` they are left out rather than failing or costing
    minutes; named explicitly, they run (or fail with a message saying why).
    """
    have = set(target.label_only or {})
    return [n for n in names if label_only_kind(n, params) in have | {None}
            and (n != "selena-adaptive" or defense == "selena")]


def shadow_split(config: TargetConfig, params: dict) -> tuple[int, int]:
    """``selena-adaptive``'s ``k``/``l``: its own parameters, else those of the target's ``selena``; a pair
    SELENA refuses (``1 <= l < k``) is refused with SELENA's one-line error."""
    own = make_defense("selena", config.defense_params if config.defense == "selena" else {})
    k, l = params["k"] or own.k, params["l"] or own.l
    make_defense("selena", {"k": k, "l": l})
    return k, l
