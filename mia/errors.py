"""User-facing errors.

A :class:`MiaError` is a mistake the user can fix (unknown name, missing file,
bad value). Its message is one line that names the problem and the fix; the CLI
prints it without a traceback and exits non-zero. Anything else is a bug.
"""


class MiaError(Exception):
    """A user error with a one-line message that says how to fix it."""


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
