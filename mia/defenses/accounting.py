"""Opacus' RDP accounting, with its one recurring warning said in one line of ours.

Opacus warns "Optimal order is the largest alpha. Please consider expanding
the range of alphas ..." (two lines with its file path) whenever the best
Rényi order lies at the end of the orders it tries, which happens at every
large epsilon (8 and up over a few hundred steps). The epsilon is still a
valid upper bound, only looser than a wider range would give; the user can
do nothing about Opacus' range from our command line, so we say what it
means once instead of echoing the library's advice.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

LOOSE_ORDER = "Optimal order is the"


@contextmanager
def loose_order_note(defense: str, hint: str = "", report: bool = True) -> Iterator[None]:
    """Run accounting code; Opacus' loose-order warnings become one warning of ``defense`` (none with
    ``report=False``: a search for the noise multiplier probes extreme ones, whose orders say nothing about
    the epsilon finally spent), other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    loose = False
    for w in caught:
        if LOOSE_ORDER in str(w.message):
            loose = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if loose and report:
        warnings.warn(f"{defense}: the best RDP order is at the end of the accountant's range, so epsilon is a "
                      f"valid but looser upper bound than it could be{hint}", stacklevel=3)
