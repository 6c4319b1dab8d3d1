"""User-facing errors.

A :class:`MiaError` is a mistake the user can fix (unknown name, missing file,
bad value). Its message is one line that names the problem and the fix; the CLI
prints it without a traceback and exits non-zero. Anything else is a bug.
"""

import errno


class MiaError(Exception):
    """A user error with a one-line message that says how to fix it."""


class NothingToScore(MiaError):
    """An attack's inputs give it nothing to score: no recorded FL round with what it needs (two other sampled
    clients), no reference model on one side of the audited samples. Under ``--attacks all`` the attack is
    left out with a warning; named, it fails with this message."""


class Diverged(MiaError):
    """Training produced a non-finite loss. Its own class so that a caller that knows more of the cause (a
    federation whose defense perturbed the last global model) can say so."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch scheduler), raised like Ctrl-C so that open runs are marked KILLED."""


def unknown(kind: str, name: str, known) -> MiaError:
    """The error for a name not in a registry, listing the known names."""
    return MiaError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


PLUGIN_HINT = "; one of your own: name the module that registers it in MIA_PLUGINS"
"""Appended to an unknown model, dataset, attack or defense name: where a user's own names come from."""


_DISK = {errno.ENOSPC: "free space there", getattr(errno, "EDQUOT", errno.ENOSPC): "free space there",
         errno.EROFS: "use a folder you can write"}
_ELSEWHERE = "or point MLFLOW_TRACKING_URI (runs), MIA_CACHE (caches) or TMPDIR at another disk"


def storage_failure(exc: BaseException) -> str | None:
    """One line for an exception that a full or read-only disk caused (seen in its cause chain), else ``None``.

    A full disk shows as an ``OSError`` deep inside MLflow, torch or numpy (or SQLite's "database or disk is
    full" inside an MLflow error): a traceback through three libraries for what the user fixes by freeing
    space or pointing the store elsewhere.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK:
            where = f" {exc.filename}" if exc.filename else ""
            return f"cannot write{where}: {exc.strerror or 'disk error'}; {_DISK[exc.errno]}, {_ELSEWHERE}"
        if "database or disk is full" in str(exc):
            return f"the tracking store's database or disk is full; free space there, {_ELSEWHERE}"
        exc = exc.__cause__ or exc.__context__
    return None
