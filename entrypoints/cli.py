"""The ``mia`` command: a Click group whose subcommands live one per module."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import click

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from entrypoints.attack import attack  # noqa: E402
from entrypoints.audit import audit  # noqa: E402
from entrypoints.catalog import attacks, datasets, defenses, info, models  # noqa: E402
from entrypoints.report import report  # noqa: E402
from entrypoints.train import train  # noqa: E402
from entrypoints.tune import tune  # noqa: E402
from mia.allocator import keep_freed_memory  # noqa: E402
from mia.errors import MiaError, Terminated, storage_failure  # noqa: E402
from mia.plugins import load_plugins, users_failure  # noqa: E402

MIA_PACKAGE = str(Path(__file__).resolve().parents[1] / "mia")
_library_format = warnings.formatwarning


def format_warning(message, category, filename, lineno, line=None) -> str:
    """Our own warnings read as one line for the user; a library's keep Python's format, which locates them."""
    if str(Path(filename).resolve()).startswith(MIA_PACKAGE):
        return f"Warning: {message}\n"
    return _library_format(message, category, filename, lineno, line)


class Group(click.Group):
    """Turns a :class:`MiaError`, a full or read-only disk (:func:`mia.errors.storage_failure`) and an
    exception the user's own code raised (a plugin's defense hook or model forward,
    :func:`mia.plugins.users_failure`) into a one-line message and exit code 1, no traceback. An exception
    in mia's own code stays a traceback: a bug to see whole."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MiaError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:  # the run (if any) said which one it was; exit as shells expect
            click.echo("Terminated." if isinstance(exc, Terminated) else "Aborted.", err=True)
            ctx.exit(143 if isinstance(exc, Terminated) else 130)
        except Exception as exc:
            if (full := storage_failure(exc)) is not None:
                raise click.ClickException(full) from None
            failure = users_failure(exc)
            if failure is None:
                raise
            raise click.ClickException(f"your code failed: {failure}") from None


def _terminate(signum, frame):
    raise Terminated()


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mia", message="mia %(version)s")
@click.pass_context
def main(ctx: click.Context) -> None:
    """mia: membership inference attacks and defenses, tracked in MLflow."""
    keep_freed_memory()  # CPU steps stop page-faulting their tensors in again (mia/allocator.py)
    warnings.formatwarning = format_warning
    # MLflow announces the one-time set-up of a new SQLite store at INFO; its other messages (a server's
    # run links) stay
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    try:
        load_plugins()  # the user's own models, datasets, attacks, defenses (mia/plugins.py)
    except MiaError as exc:
        if ctx.invoked_subcommand != "info":  # the installation check reports it instead
            raise click.ClickException(str(exc)) from None
    if threading.current_thread() is threading.main_thread():  # SIGTERM marks open runs KILLED, as Ctrl-C does
        previous = signal.signal(signal.SIGTERM, _terminate)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


for command in (train, attack, audit, tune, report, datasets, models, attacks, defenses, info):
    main.add_command(command)

if __name__ == "__main__":
    sys.exit(main())
