"""``mia audit``: train a target and attack it, two linked MLflow runs (the MLproject ``main``)."""

from __future__ import annotations

import click

from entrypoints.attack import print_table
from entrypoints.config import target_config
from entrypoints.options import (attack_options, attack_params, common_options, config_option, federated_options,
                                 imported_options, log_options, pass_options, pruning_options, target_options)


@click.command("audit")
@target_options
@federated_options
@pruning_options
@attack_options
@imported_options
@common_options
@config_option
@pass_options
def audit(opts: dict) -> None:
    """Train a target, train shadows, run the attacks and print the leakage table."""
    from mia.experiment import audit_run

    config = target_config(opts)
    outcome = audit_run(config, opts["attacks"], opts["reference_models"], attack_params(opts["attack_param"]),
                        experiment=opts["experiment"], progress=not opts["quiet"], pool_mode=opts["pool_mode"],
                        adaptive=opts["adaptive"], checkpoint=opts["checkpoint"], members=opts["members"])
    log_options(opts, outcome.target_run_id, outcome.run_id)
    print_table(outcome)
