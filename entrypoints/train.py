"""``mia train``: train a target model in one MLflow run and print its run id."""

from __future__ import annotations

import click

from entrypoints.config import target_config
from entrypoints.options import common_options, pass_options, target_options


@click.command("train")
@target_options
@common_options
@pass_options
def train(opts: dict) -> None:
    """Train a target model; logs config, per-epoch metrics, split, checkpoint and signals."""
    from mia.experiment import train_run

    config = target_config(opts)
    outcome = train_run(config, opts["experiment"], progress=not opts["quiet"])
    click.echo(f"test accuracy {outcome.test_accuracy:.4f}  train accuracy {outcome.train_accuracy:.4f}")
    click.echo(f"run id: {outcome.run_id}")
