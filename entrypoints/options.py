"""Options shared by ``mia train``, ``mia attack`` and ``mia audit``, and their parsing."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import click

from mia.errors import MiaError


class Finite(click.FloatRange):
    """A float option in a range that also refuses ``nan`` and ``inf``, which Click's ranges let through
    (``nan`` compares false with every bound) and which would reach an optimizer or a sampler."""

    name = "float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number

    def _describe_range(self) -> str:  # unbounded (the range is checked with the config): not "x<=None"
        return "finite" if self.min is None and self.max is None else super()._describe_range()


def key_values(pairs: tuple[str, ...], flag: str, form: str = "key=value") -> dict[str, str]:
    """``("a=1", "b=x,c=2")`` -> ``{"a": "1", "b": "x", "c": "2"}``; a pair without ``=`` is a user error.

    Each value may hold several comma-separated pairs, which is how an MLproject
    parameter (one string) passes them; a comma followed by no ``=`` stays in the
    value (``mem_scores_csv=a,b.csv``). Empty values (an unset MLproject parameter) are skipped.
    """
    pieces: list[str] = []
    for pair in pairs:
        first, *rest = pair.split(",")
        pieces.append(first)
        for piece in rest:
            if "=" in piece:
                pieces.append(piece)
            else:
                pieces[-1] += "," + piece
    out = {}
    for pair in (p for p in pieces if p.strip()):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MiaError(f"{flag} expects {form}, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def attack_params(pairs: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``("loss.thresholds=global",)`` -> ``{"loss": {"thresholds": "global"}}``."""
    out: dict[str, dict[str, str]] = {}
    for key, value in key_values(pairs, "--attack-param", "attack.key=value (e.g. loss.thresholds=global)").items():
        attack, sep, name = key.partition(".")
        if not sep or not name:
            raise MiaError(f"--attack-param expects attack.key=value (e.g. loss.thresholds=global), got {key!r}")
        out.setdefault(attack, {})[name] = value
    return out


class OptionalInt(click.ParamType):
    """A positive int, or an empty string meaning "the default" (what MLproject passes when unset)."""

    name = "integer"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip() == "":
            return None
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer", param, ctx)
        if number < 1:
            self.fail(f"{number} is not >= 1", param, ctx)
        return number


def typed(name: str) -> bool:
    """Whether the user gave option ``name``, on the command line or in a ``--config`` file (not its default,
    nor ``mlflow run``'s unset parameter): only a given option is worth a note or an error."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE,
                                                                   click.core.ParameterSource.DEFAULT_MAP)


def config_option(func):
    """``--config FILE``: the command's options from a YAML file, under the names they have on the command line.

    Users of ML Privacy Meter and LeakPro describe an audit in a YAML file; a
    file also keeps a long command (a federated or pruning audit has thirty
    options) in version control. The file fills Click's ``default_map``, so
    its values pass through the same types and checks as typed ones, and an
    option typed on the command line wins over the file. The file is read
    without YAML's guesses at types (``010`` is not octal 8, ``2.5`` is not
    cut to an ``int``): every value reaches Click as the text it would be
    on the command line.
    """
    return click.option("--config", type=click.Path(dir_okay=False), default=None, is_eager=True,
                        expose_value=False, callback=_read_config, metavar="FILE",
                        help="YAML file of this command's options, named as on the command line (dataset: "
                             "purchase-synth, reference-models: 16, defense-param: {alpha: 0.5}); options typed "
                             "on the command line win.")(func)


def _read_config(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
    if path is None:
        return
    if os.environ.get("MLFLOW_RUN_ID"):  # mlflow run types every declared parameter: they would win silently
        raise MiaError("--config does not combine with `mlflow run`, whose declared parameters override the "
                       "file; pass the options as -P key=value")
    ctx.default_map = {**(ctx.default_map or {}), **config_defaults(ctx, path)}


def config_defaults(ctx: click.Context, path: str) -> dict[str, object]:
    """The ``default_map`` of ``ctx``'s command that the YAML file ``path`` describes (see :func:`config_option`)."""
    import yaml

    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.BaseLoader)  # every scalar a str
    except OSError as exc:
        raise MiaError(f"--config {path}: {exc.strerror or exc}; pass a readable YAML file") from None
    except UnicodeDecodeError:
        raise MiaError(f"--config {path} is not UTF-8 text; pass a YAML file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise MiaError(f"--config {path} is not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None or data == "":
        return {}
    if not isinstance(data, dict):
        raise MiaError(f"--config {path} must map option names to values (dataset: digits), "
                       f"not hold a {type(data).__name__}")
    command, options = ctx.command, {}
    for p in command.params:
        if isinstance(p, click.Option) and p.expose_value:
            options[p.name.replace("_", "-")] = p
            options.update((o.lstrip("-"), p) for o in p.opts)
    out, given = {}, {}
    for key, value in data.items():
        option = options.get(str(key).lstrip("-").replace("_", "-"))
        if option is None:
            known = sorted({max(o.opts, key=len).lstrip("-") for o in options.values()})
            raise MiaError(f"--config {path}: `mia {command.name}` has no option {key!r}; known: {', '.join(known)}")
        if option.name in given:
            raise MiaError(f"--config {path}: {given[option.name]!r} and {key!r} are one option; keep one")
        given[option.name] = key
        if value in _NULL:  # the option's default
            continue
        out[option.name] = _option_value(option, value, key, path)
        try:  # checked here, where the message can say that the value came from the file
            option.type_cast_value(ctx, out[option.name])
        except click.BadParameter as exc:
            raise MiaError(f"--config {path}: {key}: {exc.message}") from None
    return out


#: What YAML writes for "no value"; read as text (:func:`config_defaults`), they mean the option's default.
_NULL = ("", "~", "null", "Null", "NULL")


def _option_value(option: click.Option, value, key, path: str):
    """A YAML value (text, lists and mappings of text) as Click takes it for ``option``: mappings and lists of a
    repeatable ``KEY=VALUE`` option become its pairs (``attack-param: {loss: {thresholds: global}}``), a list of
    names a comma-separated one."""
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise MiaError(f"--config {path}: option {key!r} takes a list of values, not of lists or mappings")
    if option.multiple:
        if not isinstance(value, dict):
            return list(value) if isinstance(value, list) else [value]
        nested = option.name == "attack_param"  # ATTACK.KEY=VALUE: a mapping per attack
        pairs = []
        for k, v in value.items():
            if (isinstance(v, dict) != nested or isinstance(v, list) or v in _NULL
                    or nested and not all(isinstance(vv, str) for vv in v.values())):
                form = f"{k}: {{key: value}}" if nested else f"{k}: value"
                raise MiaError(f"--config {path}: {key} {k}: give {form}")
            pairs += [f"{k}.{kk}={vv}" for kk, vv in v.items()] if nested else [f"{k}={v}"]
        return pairs
    if isinstance(value, dict):
        raise MiaError(f"--config {path}: option {key!r} takes one value, not a mapping")
    return ",".join(value) if isinstance(value, list) else value


OPTIONS_FILE = "options.yaml"
#: Options that change nothing a run records (progress bars), left out of :data:`OPTIONS_FILE`.
_UNRECORDED = ("quiet",)


def options_yaml(opts: dict) -> str:
    """The options the user gave the current command (typed, or from ``--config``; not defaults, nor what the
    environment holds) as a ``--config`` file that runs it again, under their command-line names, a storage URI
    without its password. The run's params hold every effective value."""
    import yaml

    from mia import __version__
    from mia.tracking import redact

    ctx = click.get_current_context()
    params = {p.name: p for p in ctx.command.params if isinstance(p, click.Option) and p.expose_value}
    out, notes = {}, []
    for name, value in opts.items():
        if name not in params or name in _UNRECORDED or value is None:
            continue
        flag_name = max(params[name].opts, key=len).lstrip("-")
        if ctx.get_parameter_source(name) == click.core.ParameterSource.ENVIRONMENT:
            notes.append(f"# {flag_name}: from ${params[name].envvar}, not stored (it may hold a password)\n")
        elif typed(name):
            out[flag_name] = list(value) if isinstance(value, tuple) else redact(value) if name == "storage" else value
    return (f"# mia {ctx.command.name} --config {OPTIONS_FILE} runs this again (written by mia {__version__}); "
            "options typed beside it win\n" + "".join(notes) + yaml.safe_dump(out, sort_keys=False, allow_unicode=True))


def log_options(opts: dict, *run_ids: str | None) -> None:
    """Store :func:`options_yaml` as ``options.yaml`` on each of ``run_ids``: what reruns them from the UI."""
    from mia.tracking import log_run_text

    text = options_yaml(opts)
    for run_id in filter(None, run_ids):
        log_run_text(run_id, text, OPTIONS_FILE)



def flag(name: str) -> str:
    """The option of parameter ``name`` as the user types it: ``local_epochs`` -> ``--local-epochs``."""
    return f"--{name.replace('_', '-')}"


def compose(*decorators):
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _target_options(defense):
    """The options every command that trains a target shares, with its own ``--defense`` option."""
    return compose(
        click.option("--scenario", default="centralized", show_default=True,
                     help="centralized, federated (FedAvg; see the federated options) or pruning (dense, then pruned "
                          "and fine-tuned; see the pruning options)."),
        click.option("--dataset", default="digits", show_default=True, help="See `mia datasets`."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Where real datasets live (or are downloaded to); default: ./data."),
        click.option("--download/--no-download", default=False,
                     help="Download the dataset if it has a public download (`mia datasets` says which)."),
        click.option("--dataset-param", multiple=True, metavar="KEY=VALUE",
                     help="Dataset parameter (repeatable, or comma-separated)."),
        click.option("--model", default=None,
                     help="resnet18, wrnD-W (e.g. wrn28-2), vgg16, densenet121, alexnet, fc, mlp, cnn-small; "
                          "default: the dataset's."),
        click.option("--norm", type=click.Choice(["bn", "gn"]), default="bn", show_default=True,
                     help="BatchNorm or GroupNorm in CNNs."),
        defense,
        click.option("--defense-param", multiple=True, metavar="KEY=VALUE",
                     help="Defense parameter (repeatable, or comma-separated)."),
        click.option("--epochs", type=OptionalInt(), default=None, help="Default: the recipe's."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None),
        click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None),
        click.option("--lr", type=Finite(min=0, min_open=True), default=None),
        click.option("--weight-decay", type=Finite(min=0), default=None),
        click.option("--schedule", type=click.Choice(["cosine", "step", "constant"]), default=None),
        click.option("--augment/--no-augment", default=None, help="Crop+flip where the dataset allows it."),
        click.option("--select-best/--no-select-best", default=None,
                     help="Release the epoch with the best validation accuracy (the default) or the last one."),
        click.option("--member-fraction", type=Finite(0, 1, min_open=True, max_open=True), default=0.25,
                     show_default=True, help="Share of the data the target trains on."),
        click.option("--nonmember-fraction", type=Finite(0, 1, min_open=True, max_open=True),
                     default=0.25, show_default=True, help="Share held out as evaluation non-members."),
        click.option("--validation-fraction", type=Finite(0, 1, min_open=True, max_open=True),
                     default=0.1, show_default=True, help="Share used for model selection only."),
        click.option("--label-only", default="",
                     help="Label-only signals to compute in training beyond those the attacks read: aug, noise-flip, "
                          "boundary, boundary-wb (the boundary searches cost hundreds of queries per sample). "
                          "`mia audit` computes what its --attacks read (all: aug,noise-flip where they apply); "
                          "`mia attack` computes what its target lacks from the checkpoint."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--cpu-bf16", is_flag=True, default=None,
                     help="Train under bf16 autocast on the CPU too (as on CUDA): about 2x faster steps for fc nets "
                          "and CNNs on CPUs with native bf16 (AVX512-BF16, AMX); CPU runs are float32 by default."),
        click.option("--compile", "compile", is_flag=True, default=None,
                     help="On CUDA, torch.compile the model with CUDA graphs: about 2x faster CNN training where "
                          "kernel launches bound the step (an H100 in benchmarks/RESULTS.md), after a minute or so "
                          "of compiling; for long runs. No effect on the CPU."),
    )


target_options = _target_options(click.option("--defense", default="none", show_default=True,
                                                 help="Defense applied in training."))
#: ``mia tune``'s: the defense to search is required (none has nothing to search)
tuned_target_options = _target_options(click.option(
    "--defense", required=True, help="The defense whose hyperparameters to search (see `mia defenses`)."))

federated_options = compose(
    click.option("--clients", type=click.IntRange(min=1), default=10, show_default=True,
                 help="Federated: number of clients."),
    click.option("--rounds", type=click.IntRange(min=1), default=20, show_default=True,
                 help="Federated: FedAvg rounds."),
    click.option("--local-epochs", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Federated: local epochs per round."),
    click.option("--client-fraction", type=Finite(0, 1, min_open=True), default=1.0, show_default=True,
                 help="Federated: share of clients sampled per round."),
    click.option("--partition", type=click.Choice(["iid", "dirichlet"]), default="iid", show_default=True,
                 help="Federated: how the members are dealt to clients."),
    click.option("--alpha", type=Finite(min=0, min_open=True), default=0.5, show_default=True,
                 help="Federated: Dirichlet concentration (small = skewed labels)."),
    click.option("--server-lr", type=Finite(min=0, min_open=True), default=1.0, show_default=True,
                 help="Federated: server learning rate on the aggregated update."),
    click.option("--local-lr", type=Finite(min=0, min_open=True), default=0.1, show_default=True,
                 help="Federated: local SGD learning rate."),
    click.option("--local-momentum", type=Finite(0, 1, max_open=True), default=0.0, show_default=True,
                 help="Federated: local SGD momentum (reset every round)."),
    click.option("--local-batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Federated: local batch size."),
    click.option("--target-client", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Federated: the client whose members the server's view is recorded for."),
    click.option("--record-every", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Federated: record the server's view (and checkpoint) every k rounds."),
)

pruning_options = compose(
    click.option("--pruner", default="l1-unstructured", show_default=True,
                 help="Pruning: l1-unstructured, l1-global, l1-filter, l2-filter, slimming."),
    click.option("--sparsity", type=Finite(), default=0.6, show_default=True,
                 help="Pruning: fraction of weights (filters, channels for structured pruners) to prune, in (0, 1)."),
    click.option("--prune-iterations", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Pruning: prune + fine-tune steps to the sparsity (1 = one-shot)."),
    click.option("--finetune-epochs", type=click.IntRange(min=0), default=10, show_default=True,
                 help="Pruning: fine-tuning epochs after each pruning step (the defense acts here)."),
)

imported_options = compose(
    click.option("--checkpoint", metavar="FILE", default=None,
                 help="Audit a model trained elsewhere: its torch.save(model.state_dict()) file, for --model "
                      "(and --norm) on --dataset; nothing trains. Needs --members."),
    click.option("--members", metavar="FILE", default=None,
                 help="With --checkpoint: the dataset rows it trained on, one index per line (or an .npy); "
                      "non-members, validation and population are drawn from the other rows."),
)

attack_options = compose(
    click.option("--attacks", default="all", show_default=True, help="Comma-separated names or `all`."),
    click.option("--reference-models", type=click.IntRange(min=1), default=4, show_default=True,
                 help="Reference (shadow) models with the target's recipe; cached and grown across runs."),
    click.option("--pool", "pool_mode", type=click.Choice(["online", "offline"]), default="online",
                 show_default=True,
                 help="online: reference models also train on the audited samples (LiRA online); "
                      "offline: on the attacker's population only."),
    click.option("--adaptive/--no-adaptive", default=False,
                 help="Train the reference models with the target's defense and hyperparameters."),
    click.option("--attack-param", multiple=True, metavar="ATTACK.KEY=VALUE",
                 help="Attack parameter, e.g. loss.thresholds=global (repeatable, or comma-separated)."),
)

def run_options(experiment_default: str = "$MLFLOW_EXPERIMENT_NAME, else mia"):
    """``--experiment`` and ``--quiet``, saying where a command's runs go without ``--experiment``: `mia attack`
    puts its run beside the training run, which its help said was experiment ``mia``."""
    return compose(
        click.option("--experiment", default=None,
                     help=f"MLflow experiment of the runs (default: {experiment_default})."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    )


common_options = run_options()
attack_run_options = run_options("the training run's")


def pass_options(func):
    """Collect every option into one ``opts`` dict: the commands share most of them."""

    @functools.wraps(func)
    def wrapper(**opts):
        return func(opts)

    return wrapper
