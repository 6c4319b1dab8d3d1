"""``mia tune``: an Optuna study of a defense's privacy–utility frontier, one nested MLflow run per trial."""

from __future__ import annotations

import click

from entrypoints.config import target_config
from entrypoints.options import (Finite, attack_params, common_options, config_option, federated_options, key_values,
                                 log_options, pass_options, pruning_options, tuned_target_options)

#: Kept literal so that ``mia --help`` does not import Optuna; tests check them against :mod:`tuning`.
SAMPLER_NAMES = ("tpe", "nsga2", "gp")
LEAKAGE_NAMES = ("max-tpr", "max-auc")


@click.command("tune")
@tuned_target_options
@federated_options
@pruning_options
@click.option("--space", "space_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file {param: {low:, high:, log:} | {choices: [...]}}; default: the defense's default "
                   "search ranges (`search` in `mia defenses`; a file may search any `valid` range), less the "
                   "parameters fixed with --defense-param.")
@click.option("--attacks", default="loss,mentr,nn", show_default=True,
              help="Attacks whose worst case is the leakage (comma-separated, or `all`).")
@click.option("--reference-models", type=click.IntRange(min=1), default=4, show_default=True,
              help="Reference models (cached pools, shared by the trials whose targets are released at the "
                   "same epoch, where the pool's models stop; one per trial with --adaptive).")
@click.option("--pool", "pool_mode", type=click.Choice(["online", "offline"]), default="online", show_default=True,
              help="Reference models trained with (online) or without (offline) the audited samples.")
@click.option("--adaptive/--no-adaptive", default=False, help="Reference models trained with each trial's defense (costly).")
@click.option("--attack-param", multiple=True, metavar="ATTACK.KEY=VALUE", help="Attack parameter (repeatable, or comma-separated).")
@click.option("--leakage", type=click.Choice(LEAKAGE_NAMES), default="max-tpr", show_default=True,
              help="Leakage objective (minimized): the largest TPR at 1% FPR, or the largest AUC, over the attacks.")
@click.option("--min-accuracy", type=Finite(0, 1), default=None,
              help="Constraint: trials below this test accuracy are infeasible (never on the front).")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default="tpe", show_default=True,
              help="tpe (multi-objective TPE), nsga2 or gp (Gaussian process); seeded with --seed.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="New trials to run (over all --jobs workers).")
@click.option("--storage", envvar="MIA_TUNE_STORAGE", default="sqlite:///optuna.db", show_default=True,
              help="memory, sqlite:///FILE, a journal file FILE.log or FILE.journal (many workers on one machine) "
                   "or postgresql://user:password@host/db (many machines); also read from $MIA_TUNE_STORAGE, "
                   "the way to pass a password under `mlflow run`, which logs project parameters as given.")
@click.option("--study-name", default=None, help="Default: mia-<dataset>-<defense>; an existing study resumes.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine (needs a journal file or PostgreSQL storage); "
                   "with GPUs and --device auto|cuda, one GPU per worker, round-robin.")
@common_options
@config_option
@pass_options
def tune(opts: dict) -> None:
    """Search a defense's hyperparameters for the test accuracy / leakage Pareto front."""
    import optuna

    from mia import tracking
    from mia.attacks.selection import as_asked, resolve_attacks
    from tuning import frontier
    from tuning.objective import LEAKAGE, Objective
    from tuning.space import defense_space, load_space
    from tuning.study import StudySettings
    from tuning.study import tune as run_study

    config = target_config(opts)
    fixed = set(key_values(opts["defense_param"], "--defense-param"))
    space = (load_space(opts["space_file"], config.defense, fixed) if opts["space_file"]
             else defense_space(config.defense, fixed))
    asked = as_asked(opts["attacks"])
    names = resolve_attacks(asked, config.scenario)  # checked here, before any trial
    # `all` stays `all`: the audit then leaves out the attacks the data cannot have (aug on tabular rows,
    # noise-flip on images), as `mia audit --attacks all` does; named, they failed every trial
    objective = Objective(config, space, ("all",) if asked == "all" else tuple(names),
                          leakage=opts["leakage"], min_accuracy=opts["min_accuracy"],
                          reference_models=opts["reference_models"], attack_params=attack_params(opts["attack_param"]),
                          pool_mode=opts["pool_mode"], adaptive=opts["adaptive"], experiment=opts["experiment"],
                          progress=not opts["quiet"])
    settings = StudySettings(opts["study_name"] or f"mia-{config.dataset}-{config.defense}", opts["storage"],
                             opts["sampler"], opts["seed"], opts["trials"], opts["jobs"])
    optuna.logging.set_verbosity(optuna.logging.WARNING if opts["quiet"] else optuna.logging.INFO)
    result = run_study(objective, settings)
    log_options(opts, result.run_id)

    trials = result.study.get_trials(deepcopy=False)
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    click.echo(f"study {settings.study_name} ({tracking.redact(settings.storage)}): {len(trials)} trials, "
               f"{done} complete, {len(result.new)} new")
    click.echo(f"Pareto front (test accuracy up, {LEAKAGE[objective.leakage][1]} down):")
    click.echo(frontier.table(result.front))
    if not result.front:
        click.echo("(empty: " + (f"none of the {done} complete trials reaches --min-accuracy {opts['min_accuracy']:g}"
                                 if done and opts["min_accuracy"] is not None else "no trial completed") + ")")
    click.echo(f"study run: {result.run_id}")

