"""Your own models, datasets, attacks and defenses on the command line: ``MIA_PLUGINS``.

Registering is the one way to add a name: ``MODELS.register`` (``mia.models``),
``DATASETS.register`` (``mia.data``), ``ATTACKS`` and ``DEFENSES`` likewise. From
Python, register and then use the name. The ``mia`` command, and the workers
``mia tune`` spawns, first import the modules that ``MIA_PLUGINS`` names
(comma-separated; each an importable module name or the path of a ``.py``
file), so that a module doing those registrations makes its names known to
every command: ``MIA_PLUGINS=my_models.py mia audit --dataset mine --model mynet``.
Training, attacking or tuning with such names needs the same ``MIA_PLUGINS`` each time (``mia report``
reads only the runs).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from mia.errors import MiaError

ENV = "MIA_PLUGINS"

__all__ = ["ENV", "call_users", "load_plugins", "users_failure"]


def load_plugins(names: str | None = None) -> list[str]:
    """Import each plugin of ``names`` (default: ``$MIA_PLUGINS``) once; returns them as given.

    A module already imported is not imported again, so loading twice does
    not register twice. A plugin that cannot be found or raises while it
    loads is a one-line :class:`MiaError` naming it.
    """
    names = os.environ.get(ENV, "") if names is None else names
    plugins = [n.strip() for n in names.split(",") if n.strip()]
    for plugin in plugins:
        _load(plugin)
    return plugins


def _load(plugin: str) -> None:
    if plugin.endswith(".py"):
        path = Path(plugin).expanduser().resolve()
        if not path.is_file():
            raise MiaError(f"{ENV}: no plugin file {plugin} (from {os.getcwd()}); name a .py file or a module")
        name = f"mia_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return
        if str(path.parent) not in sys.path:  # as for a script: modules beside it import
            sys.path.append(str(path.parent))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise MiaError(f"{ENV}: plugin {plugin} failed while loading: {_one_line(exc)}") from None
        return
    try:
        importlib.import_module(plugin)
    except ModuleNotFoundError as exc:
        beside = f"; for ./{plugin}.py write {ENV}={plugin}.py" if Path(f"{plugin}.py").is_file() else ""
        raise MiaError(f"{ENV}: cannot import plugin module {plugin!r} ({_one_line(exc)}); name an importable "
                       f"module or the path of a .py file{beside}") from None
    except Exception as exc:
        raise MiaError(f"{ENV}: plugin {plugin} failed while loading: {_one_line(exc)}") from None


def users_failure(exc: BaseException) -> str | None:
    """``exc`` as one line naming the user's line, where the user's own code raised it; ``None`` for the others.

    For what no :func:`call_users` wraps: a hook of the user's defense or the forward of their model, called
    from deep inside the training loop. The frame that decides is the innermost one outside the installed
    libraries (torch, numpy, the standard library): the user's own code (a plugin, a script) makes the failure
    theirs, ``Type: message (file:line, in function)``; mia's own (this package, its commands) makes it a
    bug of mia, to be seen whole. A :class:`MiaError` is a message for the user already, wherever it came from.
    """
    import site
    import sysconfig
    import traceback

    if isinstance(exc, MiaError):
        return None
    installed = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    installed += [*site.getsitepackages(), site.getusersitepackages()]  # pip install --user too
    libraries = {str(Path(path).resolve()) for path in installed}
    ours = str(Path(__file__).resolve().parents[1])  # mia/ and entrypoints/

    def owner(filename: str) -> str:
        path = str(Path(filename).resolve())
        if path.startswith(ours) and Path(path).relative_to(ours).parts[0] in ("mia", "entrypoints"):
            return "mia"
        if filename.startswith("<") or any(path.startswith(lib) for lib in libraries):
            return "library"
        return "user"

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if owner(f.filename) != "library"]
    if not frames or owner(frames[-1].filename) != "user":
        return None
    last = frames[-1]
    return f"{_first_line(exc)} ({Path(last.filename).name}:{last.lineno}, in {last.name})"


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone for an empty message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message (file:line)``, the line being the last one in the user's code."""
    import traceback

    where = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename
             and not f.filename.startswith(str(Path(__file__).parent))]
    at = f" ({Path(where[-1].filename).name}:{where[-1].lineno})" if where else ""
    return _first_line(exc) + at


def call_users(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, where ``fn`` may be a user's own loader or builder: an exception it raises is
    a one-line :class:`MiaError` naming ``what`` and the line of the user's code (the traceback stays
    chained for a notebook), where it was a traceback through mia. mia's own functions raise as they are:
    an exception there is a bug to see whole."""
    try:
        return fn(*args, **kwargs)
    except MiaError:
        raise
    except Exception as exc:
        if getattr(fn, "__module__", "").split(".")[0] == "mia":
            raise
        raise MiaError(f"{what} failed: {_one_line(exc)}") from exc
