"""``mia datasets``, ``mia models``, ``mia attacks``, ``mia defenses``, ``mia info``: what exists and whether the
install works."""

from __future__ import annotations

import importlib.metadata
import platform
import tempfile
from pathlib import Path

import click


def _echo(line: str, params: dict | None = None) -> None:
    """One entry of a list: its line, then its parameters (if any) on one indented line."""
    click.echo(line)
    if params:
        click.echo("    params: " + "; ".join(f"{name}: {p.type.__name__} = {p.default!r}{_values(p)} ({p.help})"
                                            for name, p in params.items()))


def _values(p) -> str:
    """`` in (0, inf)``, `` one of a, b``: the values a parameter declares it may take, when it declares any."""
    if getattr(p, "choices", None) is not None:
        return f" one of {', '.join(map(str, p.choices))}"
    if getattr(p, "low", None) is not None or getattr(p, "high", None) is not None:
        return f" in {p.valid_range()}"
    return ""


@click.command("datasets")
def datasets() -> None:
    """List datasets, their kind, default model, parameters and files."""
    from mia.data.datasets import DATASETS

    for name, spec in DATASETS.items():
        _echo(f"{name}  [{spec.kind}, default model {spec.default_model}]  {spec.description}", spec.params)
        if spec.files:
            click.echo(f"    files: {spec.files}")


@click.command("models")
def models() -> None:
    """List models, the data they take, their default recipe and the smallest image side they accept."""
    from mia.models import MODELS

    for name, spec in MODELS.items():
        size = f", images from {spec.min_size}x{spec.min_size}" if spec.min_size > 1 else ""
        click.echo(f"{name}  [{'/'.join(spec.kinds)}, recipe {spec.recipe}{size}]  {spec.description}")


@click.command("attacks")
def attacks() -> None:
    """List attacks, their family, what signals they need and their parameters."""
    from mia.attacks import ATTACKS
    from mia.fl.attacks import FL_ATTACKS

    for name, spec in ATTACKS.items():
        needs = f", needs {', '.join(sorted(spec.needs))}" if spec.needs else ""
        _echo(f"{name}  [{spec.family}{needs}]  {spec.description}", spec.params)
    for name, spec in FL_ATTACKS.items():
        _echo(f"{name}  [federated{', multi-round' if spec.multi_round else ''}]  {spec.description}", spec.params)


@click.command("defenses")
def defenses() -> None:
    """List defenses, their scenarios and hyperparameters (valid values, what `mia tune` searches)."""
    from mia.defenses import DEFENSES

    for name, spec in DEFENSES.items():
        click.echo(f"{name}  [{', '.join(spec.scenarios)}]  {spec.description}")
        for key, p in spec.params.items():
            scale = " log" if p.log else ""
            space = (f"{'choices' if p.search else 'one of'} {', '.join(map(str, p.choices))}" if p.choices else
                     f"valid {p.valid_range()}, search [{p.search_range[0]:g}, {p.search_range[1]:g}]{scale}"
                     if p.search and p.search_range else
                     f"valid {p.valid_range()}" if p.type in (int, float) else "")
            click.echo(f"    {key}: {p.type.__name__} = {p.default!r}  {space}  ({p.help})")


@click.command("info")
def info() -> None:
    """Versions, devices and the tracking URI: the installation check."""
    import torch

    import mlflow

    from mia import __version__, lease, tracking
    from mia.allocator import keep_freed_memory
    from mia.errors import MiaError
    from mia.train.loop import cpu_has_bf16

    click.echo(f"mia {__version__}, python {platform.python_version()} on {platform.platform()}")
    for package in ("torch", "torchvision", "numpy", "scikit-learn", "mlflow", "optuna", "opacus", "pandas"):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        click.echo(f"  {package:<13} {version}")
    kept = keep_freed_memory()  # what the mia command set at its start; setting it again changes nothing
    click.echo(f"cpu threads: {torch.get_num_threads()}; freed memory "
               f"{'kept (glibc mallopt)' if kept else 'returned to the OS (not glibc, or MALLOC_*/LD_PRELOAD set)'}")
    click.echo(f"cpu bf16: {'native, so --cpu-bf16 is available' if cpu_has_bf16() else 'not native (--cpu-bf16 is refused)'}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            gib = torch.cuda.get_device_properties(i).total_memory / 2**30
            click.echo(f"cuda:{i}: {torch.cuda.get_device_name(i)}, {gib:.0f} GiB")
        click.echo("cuda: pass --compile for long runs (torch.compile with CUDA graphs)")
    else:
        click.echo("cuda: not available (training runs on the CPU)")
    uri = tracking.tracking_uri()
    store = tracking.sqlite_file(uri)
    click.echo(f"tracking URI: {uri}{_free(store.parent) if store else ''}")
    try:
        shared = lease.store_is_shared(mlflow.get_tracking_uri())
        click.echo(f"pools shared with other machines ({lease.ENV}): "
                   + ("yes, one machine at a time trains a pool" if shared else "no, this machine's store"))
    except MiaError as exc:
        click.echo(f"pools shared with other machines: {exc}")
    click.echo(f"temporary files (TMPDIR; pools pass through it): {tempfile.gettempdir()}"
               f"{_free(Path(tempfile.gettempdir()))}")
    from mia.plugins import ENV, load_plugins

    try:
        click.echo(f"plugins ({ENV}): {', '.join(load_plugins()) or 'none'}")
    except MiaError as exc:
        click.echo(f"plugins: {exc}")


LOW_DISK_GIB = 5


def _free(folder: Path) -> str:
    """`` (N GiB free)`` on the disk of ``folder`` (its nearest existing parent), flagged when low: a full disk
    stops a run at its next write."""
    import shutil

    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        gib = shutil.disk_usage(folder).free / 2**30
    except OSError:
        return ""
    return f" ({gib:.1f} GiB free{', low: runs stop when it is full' if gib < LOW_DISK_GIB else ''})"

