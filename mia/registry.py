"""A tiny name -> entry registry shared by datasets, models and attacks.

Registries instead of if-chains: adding a dataset, model or attack means
registering it, and listing commands (``mia datasets``, ``mia attacks``) read
the same tables.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from mia.errors import unknown

T = TypeVar("T")


@dataclass(frozen=True)
class Param:
    """A documented, typed parameter of a registered object (dataset, attack, ...), and the values it may take.

    ``low``/``high`` bound the valid numbers (``None``: unbounded; ``open_low``:
    ``low`` itself excluded, for what must be positive); ``choices`` lists
    categorical values. An attack's values are checked before anything trains,
    as a defense's are (:class:`mia.defenses.base.HyperParam` adds what ``mia tune``
    searches): ``temperature=0`` is a one-line error, not NaN scores after the training.
    """

    type: type
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple | None = None

    def allows(self, value) -> bool:
        """Whether a number is in the valid range."""
        return not (self.low is not None and (value < self.low or self.open_low and value == self.low)
                    or self.high is not None and value > self.high)

    def valid_range(self) -> str:
        """``[0, 1]``, ``(0, inf)``: the valid range as an interval."""
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.open_low or self.low is None else "["
        return f"{left}{low}, {high}{']' if self.high is not None else ')'}"

    def check(self, owner: str, name: str, value) -> None:
        """A one-line :class:`MiaError` for a value outside the declared choices or range."""
        from mia.errors import MiaError

        if self.choices is not None and value not in self.choices:
            raise MiaError(f"{owner} parameter {name}={value!r} must be one of {', '.join(map(str, self.choices))}")
        if self.choices is None and self.type in (int, float) and not self.allows(value):
            raise MiaError(f"{owner} parameter {name}={value!r} must be in {self.valid_range()}")


class Registry(Generic[T]):
    """Maps names to entries; ``get`` raises a :class:`MiaError` listing known names."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self.hint = hint  # appended to the unknown-name error (where a user's own names come from)
        self._entries: dict[str, T] = {}

    def register(self, name: str | T, entry: T | None = None) -> T:
        """Add ``entry`` under ``name``; ``register(spec)`` alone takes the name the spec carries.

        A spec whose own name differs from ``name`` is refused (its errors and listings would name the
        other). Registering a name again replaces the entry when it comes from the same place (a notebook
        cell run again after editing the model, a plugin imported twice), and is refused when another
        module registered it (a plugin reusing a built-in name). Mistakes are one-line errors.
        """
        from mia.errors import MiaError

        if entry is None:
            entry, name = name, getattr(name, "name", None)
            if not isinstance(name, str):
                raise MiaError(f"{self.kind}: register(spec) needs a spec with a name; or register(name, entry)")
        if getattr(entry, "name", name) != name:
            raise MiaError(f"{self.kind} {name!r} registered with a spec named {entry.name!r}; give both the same "
                           f"name, or pass the spec alone: register(spec)")
        if name in self._entries and _origin(self._entries[name]) != _origin(entry):
            raise MiaError(f"{self.kind} {name!r} is already registered by {_origin(self._entries[name])}; "
                           f"register yours under another name")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            error = unknown(self.kind, name, self._entries)
            raise type(error)(f"{error}{self.hint}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()


def _origin(entry: object) -> str:
    """Where an entry comes from: the module and name of what it wraps (a spec's ``build``, ``load`` or
    ``cls``), else of the entry itself."""
    wrapped = next((getattr(entry, a) for a in ("build", "load", "cls") if callable(getattr(entry, a, None))), entry)
    return f"{getattr(wrapped, '__module__', '?')}.{getattr(wrapped, '__qualname__', type(wrapped).__qualname__)}"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(params: dict[str, Param], given: dict[str, object], owner: str) -> dict[str, object]:
    """Typed values for ``given`` (strings from the command line, or already typed).

    Names match regardless of case (``K=25 L=10`` as the papers write them).
    Unknown names and values that do not parse as the declared type raise a
    one-line :class:`MiaError` that lists what ``owner`` accepts.
    """
    from mia.errors import MiaError

    by_lower = {known.lower(): known for known in params}
    out: dict[str, object] = {}
    for name, value in given.items():
        name = name if name in params else by_lower.get(name.lower(), name)
        if name not in params:
            if not params:
                raise MiaError(f"{owner} takes no parameters (got {name!r})")
            raise MiaError(f"{owner} has no parameter {name!r}; known: {', '.join(sorted(params))}")
        try:
            out[name] = _typed(params[name].type, value)
        except (TypeError, ValueError):
            raise MiaError(f"{owner} parameter {name}={value!r} is not a valid "
                           f"{_KIND_NAMES.get(params[name].type, params[name].type.__name__)}") from None
    return out


_KIND_NAMES = {float: "float (a finite number)", int: "int (a whole number)"}


def _typed(kind: type, value):
    """``value`` as ``kind``: strings parsed; numbers must be finite, and whole for an int
    (NaN passed every range check, ``k=25.0`` failed much later); other types pass as given."""
    if kind is str:
        return value
    if kind is bool:
        if isinstance(value, str):
            if value.lower() not in _TRUE | _FALSE:
                raise ValueError(value)
            return value.lower() in _TRUE
        return value
    if kind in (int, float):
        if isinstance(value, bool):
            raise ValueError(value)
        number = float(value)  # "25", 25, 25.0 and numpy scalars alike
        if kind is float and math.isfinite(number):
            return number
        if kind is int and number.is_integer():
            return int(number)
        raise ValueError(value)
    return kind(value) if isinstance(value, str) else value
