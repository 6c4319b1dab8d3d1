"""``mia train``: train a target model in one MLflow run and print its run id."""

from __future__ import annotations

import click

from entrypoints.attack import privacy_line
from entrypoints.config import check_from_run, target_config
from mia.errors import MiaError
from mia.metrics import near_chance_note
from entrypoints.options import (common_options, config_option, federated_options, flag, imported_options, log_options,
                                 pass_options, pruning_options, target_options, typed)


@click.command("train")
@target_options
@federated_options
@pruning_options
@click.option("--from-run", metavar="RUN_ID", default=None,
              help="Pruning: prune the dense model of this centralized run (taking its data, model, split, seed "
                   "and recipe).")
@click.option("--resume", metavar="RUN_ID", default=None,
              help="Federated: continue a killed or crashed run from its last recorded round (its own options).")
@imported_options
@common_options
@config_option
@pass_options
def train(opts: dict) -> None:
    """Train a target model, or record one trained elsewhere.

    Logs config, per-epoch (or per-round) metrics, split, checkpoint and signals; with --checkpoint and
    --members nothing trains: the weights and the rows they trained on become the run's target."""
    from mia.experiment import check_dense_source, federated_run, train_run

    if opts["resume"]:
        given = [flag(name) for name in opts if name not in ("resume", "experiment", "quiet") and typed(name)]
        if given:
            raise MiaError(f"--resume continues run {opts['resume']} with its own options; drop {', '.join(given)}")
        outcome = federated_run(None, opts["experiment"], progress=not opts["quiet"], resume=opts["resume"])
    else:
        # before target_config notes the pruning options as ignored
        check_dense_source(opts["from_run"], opts["scenario"], imported=bool(opts["checkpoint"] or opts["members"]))
        config = target_config(opts)
        if opts["from_run"]:
            check_from_run(opts, config)
        outcome = train_run(config, opts["experiment"], progress=not opts["quiet"], from_run=opts["from_run"],
                            checkpoint=opts["checkpoint"], members=opts["members"])
    click.echo(f"test accuracy {outcome.test_accuracy:.4f}  train accuracy {outcome.train_accuracy:.4f}")
    scenario = "federated" if opts["resume"] else opts["scenario"]
    if note := near_chance_note(outcome.test_accuracy, outcome.data.num_classes, scenario):
        click.echo(f"note: {note}")
    if outcome.privacy:
        click.echo(privacy_line(outcome.privacy))
    if not opts["resume"]:  # a resumed run keeps the options.yaml of its start
        log_options(opts, outcome.run_id)
    click.echo(f"run id: {outcome.run_id}")
