"""Search spaces: which defense hyperparameters a study explores, and over what range.

A defense declares its space with its hyperparameters
(:class:`mia.defenses.base.HyperParam`: ``search_range``/``log`` or
``choices``); :func:`defense_space` reads it. A user narrows or reshapes it
with a small YAML (or JSON) file read by :func:`load_space`::

    smoothing: {low: 0.0, high: 0.3}
    alpha: {low: 1.0e-4, high: 0.1, log: true}
    modify_output: {choices: [true, false]}

Every name and range is checked against the defense before any trial runs, so
a typo costs a one-line error, not a study of failed trials. A YAML range may
reach anywhere in the parameter's valid range (``low``/``high``), which is
wider than the declared ``search_range`` (DP-SGD's ``epsilon`` is valid from
0 = "use the noise multiplier", searched over 0.5 to 50).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import optuna

from mia.defenses import DEFENSES
from mia.defenses.base import HyperParam
from mia.errors import MiaError
from mia.registry import coerce


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: numeric ``[low, high]`` (``log`` scale) or categorical ``choices``."""

    name: str
    type: type
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> object:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution :meth:`suggest` samples from (what a study stores with each trial)."""
        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.type is int:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        """``float [0.0, 0.5]``, ``float [0.0001, 0.1] log``, ``bool {False, True}``."""
        if self.choices is not None:
            return f"{self.type.__name__} {{{', '.join(map(str, self.choices))}}}"
        return f"{self.type.__name__} [{self.low}, {self.high}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions a study of ``defense`` searches; the other parameters keep their values."""

    defense: str
    dimensions: tuple[Dimension, ...]

    def suggest(self, trial: optuna.Trial) -> dict[str, object]:
        """The trial's defense parameters, one ``trial.suggest_*`` per dimension."""
        return {d.name: d.suggest(trial) for d in self.dimensions}

    def describe(self) -> dict[str, str]:
        return {d.name: d.describe() for d in self.dimensions}

    def check_resumes(self, trials: list) -> None:
        """Refuse a space that a study with ``trials`` cannot sample: Optuna fails every new trial whose
        categorical ``choices`` differ from those the study sampled before (a changed ``--space`` file, or
        choices in another order), with a traceback per trial; ranges may change (narrowed, widened)."""
        seen: dict[str, optuna.distributions.BaseDistribution] = {}
        for trial in trials:
            seen.update(trial.distributions)
        for dim in self.dimensions:
            old, new = seen.get(dim.name), dim.distribution()
            if old is None:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(old, new)
            except ValueError:
                was = (f"choices {list(old.choices)}" if isinstance(old, optuna.distributions.CategoricalDistribution)
                       else type(old).__name__)
                raise MiaError(f"the study searched {dim.name} over {was}, and this search space gives "
                               f"{dim.describe()}; resume it with the same choices, in the same order, or use a "
                               "new --study-name") from None


def _declared(name: str, param: HyperParam) -> Dimension | None:
    """The dimension a hyperparameter declares, or ``None`` when it declares no range or no search."""
    if not param.search:
        return None
    if param.choices is not None:
        return Dimension(name, param.type, choices=tuple(param.choices))
    if param.type is bool:
        return Dimension(name, bool, choices=(False, True))
    if param.search_range is not None and param.type in (int, float):
        return Dimension(name, param.type, *param.search_range, param.log)
    return None


def _nonempty(space: SearchSpace, fixed: set[str] = frozenset()) -> SearchSpace:
    if not space.dimensions:
        if fixed:
            raise MiaError(f"defense {space.defense}: --defense-param fixes every hyperparameter a search explores "
                           f"({', '.join(sorted(fixed))}); leave one free")
        searchable = sorted(n for n, s in DEFENSES.items() if any(_declared(k, p) for k, p in s.params.items()))
        raise MiaError(f"defense {space.defense} has no hyperparameter to search; "
                       f"tune one of: {', '.join(searchable)}")
    return space


def defense_space(defense: str, fixed: set[str] = frozenset()) -> SearchSpace:
    """The space ``defense`` declares, less the parameters fixed with ``--defense-param``."""
    spec = DEFENSES.get(defense)
    dims = [_declared(k, p) for k, p in spec.params.items() if k not in fixed]
    return _nonempty(SearchSpace(defense, tuple(d for d in dims if d is not None)), set(fixed))


def _read(path: Path) -> object:
    """A YAML file (or JSON, which YAML reads too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MiaError(f"cannot read search space {path}: {exc.strerror or exc}; give an existing YAML file") from None
    except UnicodeDecodeError:
        raise MiaError(f"search space {path} is not a text file (not UTF-8); give a YAML file") from None
    import yaml  # optuna's and MLflow's dependency

    try:
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MiaError(f"search space {path} is not valid YAML: {first}") from None


def _number(where: str, key: str, value: object, kind: type) -> float:
    """A bound as ``kind``; strings like ``1e-4`` (which YAML 1.1 leaves as text) are read as numbers."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MiaError(f"{where}: {key} must be a number, got {value!r}")
    if not math.isfinite(value):  # Optuna samples no infinite range: every trial would fail
        raise MiaError(f"{where}: {key} must be a finite number, got {value!r}")
    if kind is int and value != int(value):
        raise MiaError(f"{where}: {key} must be an integer, got {value!r}")
    return int(value) if kind is int else float(value)


def _choice(where: str, defense: str, name: str, param: HyperParam, value: object) -> object:
    """One categorical value, typed (``"0.1"`` and ``0.1`` alike) and inside the parameter's range."""
    typed = coerce({name: param}, {name: value}, f"defense {defense}")[name]
    if param.type is bool:
        ok = isinstance(typed, bool)
    elif param.type in (int, float):
        ok = isinstance(typed, (int, float)) and not isinstance(typed, bool) and (
            param.type is float or typed == int(typed))
    else:
        ok = isinstance(typed, param.type)
    if not ok:
        raise MiaError(f"{where}: choice {value!r} is not a {param.type.__name__}")
    typed = param.type(typed)
    param.check(f"defense {defense}", name, typed)
    return typed


def _dimension(defense: str, name: str, param: HyperParam, entry: object) -> Dimension:
    where = f"search space of {defense}: {name}"
    if not isinstance(entry, dict) or not entry:
        raise MiaError(f"{where} must be {{low: .., high: .., log: ..}} or {{choices: [..]}}, got {entry!r}")
    unknown = set(entry) - {"low", "high", "log", "choices"}
    if unknown:
        raise MiaError(f"{where} has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                       "use low, high, log or choices")
    if "choices" in entry:
        if set(entry) != {"choices"} or not isinstance(entry["choices"], list) or not entry["choices"]:
            raise MiaError(f"{where}: give either choices (a non-empty list) or low/high, not both")
        values = [_choice(where, defense, name, param, value) for value in entry["choices"]]
        return Dimension(name, param.type, choices=tuple(dict.fromkeys(values)))
    if param.type not in (int, float):
        raise MiaError(f"{where} is a {param.type.__name__}; give choices: [..]")
    if "low" not in entry or "high" not in entry:
        raise MiaError(f"{where} needs both low and high (or choices)")
    low, high = (_number(where, k, entry[k], param.type) for k in ("low", "high"))
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise MiaError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise MiaError(f"{where}: low ({low}) must be below high ({high}); fix a value with --defense-param instead")
    if log and low <= 0:
        raise MiaError(f"{where}: a log scale needs low > 0, got {low}")
    if not (param.allows(low) and param.allows(high)):
        raise MiaError(f"{where}: [{low}, {high}] leaves the valid range {param.valid_range()}")
    return Dimension(name, param.type, low, high, log)


def load_space(path: str | Path, defense: str, fixed: set[str] = frozenset()) -> SearchSpace:
    """A user's space for ``defense`` from ``path``, every name and range checked against the defense."""
    spec = DEFENSES.get(defense)
    data = _read(Path(path))
    if not isinstance(data, dict) or not data:
        raise MiaError(f"search space {path} must map parameter names to ranges, e.g. "
                       "smoothing: {low: 0.0, high: 0.3}")
    dims = []
    for name, entry in data.items():
        if name not in spec.params:
            raise MiaError(f"defense {defense} has no parameter {name!r} (in {path}); "
                           f"known: {', '.join(sorted(spec.params)) or 'none'}")
        if name in fixed:
            raise MiaError(f"{name} is both fixed with --defense-param and searched in {path}; drop one")
        dims.append(_dimension(defense, name, spec.params[name], entry))
    return _nonempty(SearchSpace(defense, tuple(dims)))
