"""Reading pickled dataset files without letting them run code.

CIFAR-10/100 ship as Python pickles. ``pickle.load`` on a file someone handed
you executes whatever callables the file names, so a tampered data file would
own the machine that trains on it. :class:`RestrictedUnpickler` resolves only
the handful of globals these files need (numpy array, scalar and dtype
reconstruction at any protocol,
and the ``_codecs.encode`` call Python 3 uses to write ``bytes`` at protocol 2)
and refuses everything else with a :class:`MiaError`.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from mia.errors import MiaError


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to what pickled ``bytes`` need (no arbitrary codecs)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise MiaError(f"refusing pickled call _codecs.encode(..., {encoding!r}); "
                       "only latin-1 bytes are allowed in dataset files")
    return text.encode("latin1")


# numpy's array reconstructors under their current names, whatever numpy version runs: protocol
# 2-4 rebuild an array from its state, protocol 5 from a buffer (a batch file re-saved by Python 3).
_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
_frombuffer = np.ndarray.__reduce_ex__(np.zeros(1), 5)[0]
# a numpy scalar (labels re-saved as a list of np.int64) rebuilds from its dtype and raw bytes
_scalar = np.int64(0).__reduce__()[0]

ALLOWED: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,   # written by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2.x
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`ALLOWED`."""

    def __init__(self, file, *, source: str = "pickle", encoding: str = "latin1"):
        # latin1 maps Python 2 ``str`` (numpy buffers in the original CIFAR files) 1:1 to bytes.
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise MiaError(f"refusing to load {module}.{name} from {self.source}: dataset "
                           "pickles may only hold arrays and lists; re-download the file") from None

    def persistent_load(self, pid):
        raise MiaError(f"refusing persistent id in {self.source}; re-download the file")


def load_pickle(path: str | Path) -> object:
    """Load a dataset pickle from ``path`` with :class:`RestrictedUnpickler`."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=str(path)).load()
    except MiaError:
        raise
    except Exception as exc:  # truncated or corrupt file: any of a dozen exception types
        raise MiaError(f"cannot read {path} as a dataset pickle ({type(exc).__name__}: {exc}); "
                       "re-download the file") from None
