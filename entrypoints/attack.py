"""``mia attack``: attack a training run; ``print_table`` shows the results."""

from __future__ import annotations

import click

from entrypoints.options import (attack_options, attack_params, attack_run_options, config_option, log_options,
                                 pass_options)


@click.command("attack")
@click.option("--run-id", required=True, help="The training run to attack (printed by `mia train`).")
@attack_options
@click.option("--seed", type=int, default=None,
              help="Seed of the attacks (learned attack models, RMIA's and LiRA's choices on reference models, "
                   "bootstrap intervals); default: the training run's, as `mia audit` does. The reference models "
                   "are the pool's, seeded by its recipe and split so that attacks reuse them.")
@click.option("--device", default=None,
              help="Where the reference models train and the target is queried (auto, cpu, cuda, cuda:1, ...); "
                   "default: the training run's.")
@attack_run_options
@config_option
@pass_options
def attack(opts: dict) -> None:
    """Attack a trained target with shadow models on the attacker's population."""
    from mia.experiment import attack_run

    outcome = attack_run(opts["run_id"], opts["attacks"], opts["reference_models"],
                         attack_params(opts["attack_param"]), seed=opts["seed"],
                         experiment=opts["experiment"], progress=not opts["quiet"], pool_mode=opts["pool_mode"],
                         adaptive=opts["adaptive"], device=opts["device"])
    log_options(opts, outcome.run_id)
    print_table(outcome)


COLUMNS = (("AUC", "auc"), ("bal.acc", "balanced_accuracy"),
           ("TPR@1%", "tpr_at_fpr_0.01"), ("TPR@0.1%", "tpr_at_fpr_0.001"))


def print_table(outcome) -> None:
    """One line per attack: the headline leakage metrics beside the target's test accuracy."""
    rows = [(r.name, r, outcome.test_accuracy) for r in outcome.results]
    rows += [(f"dense.{r.name}", r, outcome.dense_test_accuracy) for r in outcome.dense]  # pruning runs
    width = max(len("attack"), *(len(name) for name, _, _ in rows))
    click.echo("attack".ljust(width) + "".join(f"{title:>10}" for title, _ in COLUMNS) + f"{'test acc':>10}")
    for name, r, accuracy in rows:
        click.echo(name.ljust(width) + "".join(f"{r.metrics[key]:>10.4f}" for _, key in COLUMNS)
                   + f"{accuracy:>10.4f}")
    for note in outcome.notes:
        click.echo(f"note: {note}")
    if outcome.reference_models:  # a pool stored by an earlier (or a killed) attack is reused, not retrained
        click.echo(f"reference models: {outcome.reference_models}, {_provenance(outcome)}")
    if outcome.privacy:
        click.echo(privacy_line(outcome.privacy))
    if outcome.sparsity is not None:
        click.echo(f"pruned to sparsity {outcome.sparsity:.3f}; the dense.* rows attack the model before pruning")
    click.echo(f"target run: {outcome.target_run_id}  attack run: {outcome.run_id}")


def privacy_line(privacy: dict[str, float]) -> str:
    """The target's privacy accounting in one line (``dp.epsilon 8, dp.delta 1e-05, ...``)."""
    return "privacy: " + ", ".join(f"{k} {v:.4g}" for k, v in privacy.items())


def _provenance(outcome) -> str:
    trained = outcome.reference_models_trained
    if trained == 0:
        said = "all from the stored pool"
    elif trained < outcome.reference_models:
        said = f"{trained} trained now, the rest from the stored pool"
    else:
        said = "all trained now (stored for later attacks)"
    if outcome.reference_models_relabelled:  # a stored pool asked for label-only signals it lacked
        said += f"; {outcome.reference_models_relabelled} of them trained again for label-only signals the pool lacked"
    return said

