"""Your own models, datasets, attacks and defenses: README's plugin modules, through Python and the command
(``MIA_PLUGINS``)."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mia import audit
from mia.data import make_split
from mia.errors import MiaError
from mia.models import MODELS
from mia.plugins import load_plugins

README = Path(__file__).resolve().parents[1] / "README.md"
MIA = str(Path(sys.executable).parent / "mia")


PLUGINS = ("my_models.py", "my_plugins.py")
"""README's plugin modules, each a python block that begins with ``# <its file name>``."""


def readme_block(name: str) -> str:
    """README's python block that begins ``# <name>``: what a user saves under that name and runs as it is."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(f"# {name}\n")]
    return block


@pytest.fixture
def plugin_dir(tmp_path, migrated_db):
    """A working folder holding README's ``my_models.py`` and ``my_plugins.py`` and a migrated MLflow store."""
    for name in PLUGINS:
        (tmp_path / name).write_text(readme_block(name))
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    return tmp_path


def run(args: list[str], folder: Path, plugins: str | None = "my_models.py") -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "MIA_CACHE": str(folder)}
    env.pop("MIA_PLUGINS", None)
    if plugins is not None:
        env["MIA_PLUGINS"] = plugins
    return subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def audit_rows(stdout: str, attacks: set[str]) -> dict[str, list[str]]:
    """The rows of ``mia audit``'s table for ``attacks``: name, AUC, balanced accuracy, TPRs, test accuracy."""
    rows = {line.split()[0]: line.split() for line in stdout.splitlines() if line.split()[:1] and
            line.split()[0] in attacks}
    assert set(rows) == attacks, stdout
    return rows


def test_the_readme_plugin_makes_its_model_and_dataset_known_to_every_command(plugin_dir):
    listed = run([MIA, "datasets"], plugin_dir)
    assert listed.returncode == 0 and "blobs" in listed.stdout, listed.stderr
    # the plugin put it there: without MIA_PLUGINS the command imports nothing from its folder
    assert "blobs" not in run([MIA, "datasets"], plugin_dir, plugins=None).stdout
    info = run([MIA, "info"], plugin_dir)
    assert "plugins (MIA_PLUGINS): my_models.py" in info.stdout

    done = run([MIA, "audit", "--dataset", "blobs", "--epochs", "20", "--reference-models", "2",
                "--attacks", "loss,rmia,class-zloss", "--attack-param", "class-zloss.temperature=2", "--quiet"],
               plugin_dir, plugins=",".join(PLUGINS))  # README's attack (my_plugins.py) beside them
    assert done.returncode == 0, done.stderr[-2000:]
    rows = audit_rows(done.stdout, {"loss", "rmia", "class-zloss"})
    assert float(rows["loss"][-1]) > 0.5  # test accuracy of small-net on 10 blobs: it learned them
    assert float(rows["loss"][1]) > 0.6  # 128 hidden units memorize 375 noisy rows: the loss attack sees it
    assert float(rows["class-zloss"][1]) > 0.55


def test_the_readme_plugin_serves_python_users_as_it_is(plugin_dir):
    code = ("import my_models\nfrom mia import audit\n"
            "r = audit.run_audit(audit.resolve_config('blobs', train_overrides={'epochs': 5}), attacks='loss',"
            " reference_models=1, progress=False)\nprint(r.config.model, r.metrics['loss']['auc'])")
    done = run([sys.executable, "-c", code], plugin_dir, plugins=None)
    assert done.returncode == 0, done.stderr[-2000:]
    model, auc = done.stdout.split()
    assert model == "small-net" and 0.0 <= float(auc) <= 1.0


def test_mia_tune_searches_the_readme_defense(plugin_dir):
    """``mia tune`` and its workers know a plugin's defense and search its declared range: each trial audits a
    target trained with it (README's own audit command runs the plugin attack, above)."""
    done = run([MIA, "tune", "--dataset", "blobs", "--defense", "confidence-penalty", "--epochs", "3",
                "--reference-models", "1", "--attacks", "class-zloss", "--trials", "1",
                "--storage", f"sqlite:///{plugin_dir / 'optuna.db'}", "--quiet"], plugin_dir, plugins=",".join(PLUGINS))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 trials, 1 complete" in done.stdout and "beta" in done.stdout


@pytest.fixture
def readme_plugins(tmp_path, monkeypatch):
    """README's plugin modules imported in this process; what they registered is removed afterwards (an attack
    left in ATTACKS would join every later test's ``--attacks all``)."""
    from mia.attacks import ATTACKS
    from mia.defenses import DEFENSES

    for name in PLUGINS:
        (tmp_path / name).write_text(readme_block(name))
    monkeypatch.syspath_prepend(str(tmp_path))
    registries = (ATTACKS, DEFENSES, DATASETS, MODELS)
    before = [set(r.names()) for r in registries]
    try:
        yield [importlib.import_module(name.removesuffix(".py")) for name in PLUGINS]
    finally:
        for registry, names in zip(registries, before):
            for name in set(registry.names()) - names:
                registry._entries.pop(name)
        for name in PLUGINS:
            sys.modules.pop(name.removesuffix(".py"), None)


def test_mia_attacks_and_mia_defenses_list_the_readme_attack_and_defense(readme_plugins):
    from click.testing import CliRunner

    from entrypoints.cli import main

    attacks = CliRunner().invoke(main, ["attacks"], catch_exceptions=False).output
    assert "class-zloss  [threshold]  loss z-scored per class against shadow non-members" in attacks
    assert "temperature: float = 1.0 in (0, inf) (softmax temperature of the loss)" in attacks
    defenses = CliRunner().invoke(main, ["defenses"], catch_exceptions=False).output
    assert "confidence-penalty  [centralized, pruning]" in defenses
    assert "beta: float = 0.5  valid [0, inf), search [0, 2]  (weight of the entropy bonus)" in defenses


def test_the_readme_attack_finds_the_members_of_a_memorizing_target(readme_plugins, tmp_path):
    config = audit.resolve_config("blobs")  # small-net, 30 epochs of Adam: it memorizes its 375 noisy rows
    report = audit.run_audit(config, attacks="class-zloss,loss", reference_models=1, progress=False,
                             cache_dir=str(tmp_path), attack_params={"class-zloss": {"temperature": 2.0}})
    assert report.metrics["class-zloss"]["auc"] > 0.6


@pytest.mark.parametrize("params, match", [
    ({"temp": 2.0}, "attack 'class-zloss' has no parameter 'temp'; known: temperature"),
    ({"temperature": "0"}, r"attack 'class-zloss' parameter temperature=0.0 must be in \(0, inf\)"),
])
def test_the_readme_attack_with_a_wrong_parameter_fails_before_anything_trains(readme_plugins, monkeypatch,
                                                                               params, match):
    """An attack's parameter declares its range as a defense's does: temperature=0 gave NaN scores after the
    training, read as 'the target or its reference models may have diverged'."""
    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing the parameter")

    monkeypatch.setattr(audit._fit, "fit", no_training)
    with pytest.raises(MiaError, match=match) as err:
        audit.run_audit(audit.resolve_config("blobs"), attacks="class-zloss,loss", reference_models=1,
                        progress=False, attack_params={"class-zloss": params})
    assert "\n" not in str(err.value)


def member_confidence(beta: float) -> float:
    """Mean true-label confidence of a blobs target on its own members, trained under confidence-penalty."""
    from mia.signals import compute_signals, confidence

    config = audit.resolve_config("blobs", defense="confidence-penalty", defense_params={"beta": beta},
                                  train_overrides={"epochs": 20})
    data = audit.load_data(config)
    split = make_split(len(data), config.seed, config.split)
    target = audit.fit(config, data, split.members, split.validation, split.nonmembers, config.seed, progress=False)
    signals = compute_signals(target.model, data, split.members)
    return float(confidence(signals.logits, signals.labels).mean())


def test_the_readme_defense_lowers_member_confidence_and_declares_its_search(readme_plugins):
    from mia.defenses import make_defense
    from tuning.space import defense_space

    plain, penalized = member_confidence(0.0), member_confidence(2.0)
    assert penalized < 0.85 * plain, (plain, penalized)  # 0.31 -> 0.23 on blobs
    assert defense_space("confidence-penalty").describe() == {"beta": "float [0.0, 2.0]"}
    with pytest.raises(MiaError, match=r"defense confidence-penalty parameter beta=-1.0 must be in \[0, inf\)"):
        make_defense("confidence-penalty", {"beta": "-1"})


def test_a_plugin_that_is_missing_or_breaks_is_a_one_line_error(plugin_dir, monkeypatch):
    missing = run([MIA, "datasets"], plugin_dir, plugins="nope.py")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"Error: MIA_PLUGINS: no plugin file nope.py (from {plugin_dir}); name a .py file or a module"]
    info = run([MIA, "info"], plugin_dir, plugins="nope.py")  # the installation check still runs, and says it
    assert info.returncode == 0 and "plugins: MIA_PLUGINS: no plugin file nope.py" in info.stdout
    (plugin_dir / "broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.chdir(plugin_dir)
    with pytest.raises(MiaError, match="plugin broken.py failed while loading: RuntimeError: boom"):
        load_plugins("broken.py")
    with pytest.raises(MiaError, match="cannot import plugin module 'no_such_module_here'"):
        load_plugins("no_such_module_here")


def test_loading_a_plugin_twice_registers_its_names_once(tmp_path):
    plugin = tmp_path / "one_model.py"
    plugin.write_text("from torch import nn\nfrom mia.models import MODELS, ModelSpec\n"
                      "MODELS.register('plugin-test-net', ModelSpec('plugin-test-net', "
                      "lambda s, c, n: nn.Linear(s[0], c), ('tabular',), 'one layer', recipe='adam'))\n")
    try:
        assert load_plugins(f" {plugin} , ") == [str(plugin)]
        assert load_plugins(str(plugin)) == [str(plugin)]  # a second load: no "registered twice"
        assert "plugin-test-net" in MODELS
    finally:
        MODELS._entries.pop("plugin-test-net", None)


def test_a_run_of_a_plugin_model_attacked_without_its_plugin_says_where_the_name_comes_from():
    with pytest.raises(MiaError, match="unknown dataset 'blobs'.*name the module that registers it in MIA_PLUGINS"):
        audit.resolve_config("blobs")
    with pytest.raises(MiaError, match="unknown model 'small-net'.*MIA_PLUGINS"):
        audit.resolve_config("digits", model="small-net")


# ---------------------------------------------------------------- a user's own names, checked (a review's findings)

from contextlib import contextmanager  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mia.data import DATASETS, Dataset, DatasetSpec, load_dataset  # noqa: E402
from mia.models import ModelSpec, architecture_fingerprint, build_model  # noqa: E402


@contextmanager
def registered(registry, name, entry):
    registry.register(name, entry)
    try:
        yield
    finally:
        registry._entries.pop(name, None)


def images(n: int = 120, side: int = 40) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = (torch.rand(n, 3, side, side, generator=g) * 80 + y.view(-1, 1, 1, 1) * 60).to(torch.uint8)
    return Dataset("big-images", x, y, 3, "image", mean=(0.5,) * 3, std=(0.25,) * 3)


def strict_cnn(shape, classes, norm_layer):
    """Needs its own input size, as many user models do (a flatten sized for it)."""
    return nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), norm_layer(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * shape[1] * shape[2], classes))


def test_a_federation_of_a_model_that_needs_its_own_input_size_trains(tmp_path):
    """The stacking probe built models at 3x32x32: a 40x40-only model failed federated training."""
    from mia.fl.config import FLConfig

    spec = ModelSpec("strict-cnn", strict_cnn, ("image",), "needs 40x40", min_size=40, recipe="adam")
    with registered(MODELS, "strict-cnn", spec), \
            registered(DATASETS, "big-images", DatasetSpec("big-images", lambda d, dl: images(), "x", "image",
                                                           default_model="strict-cnn")):
        config = audit.resolve_config("big-images", scenario="federated", norm="gn",
                                      fl=FLConfig(clients=3, rounds=1))
        report = audit.run_audit(config, attacks="loss-i", reference_models=1, progress=False,
                                 cache_dir=str(tmp_path))
        assert 0.0 <= report.metrics["loss-i"]["auc"] <= 1.0


def test_an_edited_model_gets_a_new_pool_key_under_the_same_name():
    def width(w):
        return lambda shape, classes, norm: nn.Sequential(nn.Flatten(), nn.Linear(shape[0], w), nn.ReLU(),
                                                          nn.Linear(w, classes))

    prints = []
    for w in (16, 16, 8):
        with registered(MODELS, "edited-net", ModelSpec("edited-net", width(w), ("tabular",), "x", recipe="adam")):
            prints.append(architecture_fingerprint("edited-net", (5,), 3))
    assert prints[0] == prints[1] != prints[2]
    data = load_dataset("purchase-synth", n=400, features=20, classes=5)
    base = audit.resolve_config("purchase-synth", dataset_params={"n": 400, "features": 20, "classes": 5})
    split = make_split(len(data), 0, base.split)
    keys = {audit.plan_reference_pool(audit.resolve_config("purchase-synth", model=m, dataset_params=base.dataset_params),
                                      data, split).key for m in ("fc", "mlp")}
    assert len(keys) == 2


def test_a_stored_run_attacked_on_changed_data_is_refused(mlflow_store):
    from mia.experiment import attack_run, train_run

    state = {"seed": 0}

    def load(data_dir, download):
        rng = np.random.default_rng(state["seed"])
        y = rng.integers(0, 3, 300)
        return Dataset("drifting", torch.tensor(rng.normal(size=(300, 6)) + y[:, None], dtype=torch.float32),
                       torch.tensor(y), 3, "tabular")

    with registered(DATASETS, "drifting", DatasetSpec("drifting", load, "x", "tabular", default_model="mlp")):
        config = audit.resolve_config("drifting", train_overrides={"epochs": 2})
        run = train_run(config, progress=False).run_id
        assert attack_run(run, attacks="loss", reference_models=1, progress=False).results  # same data: fine
        state["seed"] = 1
        with pytest.raises(MiaError, match=f"dataset drifting is not the data run {run} trained on"):
            attack_run(run, attacks="loss", reference_models=1, progress=False)


@pytest.mark.parametrize("build, match", [
    (lambda s, c, n: nn.Linear(s[0], 10), r"must return logits of shape batch x num_classes = \(2, 3\).*got \(2, 10\)"),
    (lambda s, c, n: None, "returned NoneType, not a torch.nn.Module"),
    (lambda s, c, n: nn.Sequential(nn.Linear(s[0] + 1, c)), "fails on inputs of shape \\(5,\\): RuntimeError"),
])
def test_a_model_of_the_wrong_form_is_a_one_line_error_when_built(build, match):
    with registered(MODELS, "odd-net", ModelSpec("odd-net", build, ("tabular",), "x", recipe="adam")):
        with pytest.raises(MiaError, match=match) as err:
            build_model("odd-net", (5,), 3)
    assert "\n" not in str(err.value)


class _Returns(nn.Module):
    """A user's model returning more than its logits: ``form`` of them in eval mode, and in training mode
    too unless ``training_only`` (torchvision's GoogLeNet/Inception add auxiliary logits in training only)."""

    def __init__(self, features: int, classes: int, form, training_only: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, classes))
        self.form, self.training_only = form, training_only

    def forward(self, x):
        logits = self.net(x)
        return self.form(logits) if self.training or not self.training_only else logits


class _Output:  # HuggingFace's ModelOutput, as far as the check is concerned
    def __init__(self, logits):
        self.logits = logits


@pytest.mark.parametrize("form, training_only, match", [
    (lambda z: {"logits": z}, False, r"got dict with keys logits; .*returns out\['logits'\]"),
    (_Output, False, r"got _Output; .*returns out.logits \(HuggingFace models: model\(x\).logits\)"),
    (lambda z: (z, z), True, r"got tuple of 2 in training mode; .*returns out\[0\].*aux_logits=False"),
])
def test_a_model_returning_more_than_its_logits_is_a_one_line_error_naming_the_fix(form, training_only, match):
    spec = ModelSpec("wrapped-net", lambda s, c, n: _Returns(s[0], c, form, training_only), ("tabular",), "x",
                     recipe="adam")
    with registered(MODELS, "wrapped-net", spec):
        with pytest.raises(MiaError, match=match) as err:
            build_model("wrapped-net", (5,), 3)
    assert "\n" not in str(err.value)


def test_checking_a_model_leaves_its_statistics_and_the_random_stream_as_they_were():
    spec = ModelSpec("checked-net", lambda s, c, n: _Returns(s[0], c, lambda z: z), ("tabular",), "x",
                     recipe="adam")
    with registered(MODELS, "checked-net", spec):
        torch.manual_seed(0)
        model = build_model("checked-net", (5,), 3)
        after_check = torch.rand(3)
        torch.manual_seed(0)
        _Returns(5, 3, None)
        assert torch.equal(after_check, torch.rand(3))
    assert model.training and int(model.net[1].num_batches_tracked) == 0


def test_registrations_and_loaders_of_the_wrong_form_are_one_line_errors():
    with pytest.raises(MiaError, match="kinds must be a tuple"):
        ModelSpec("x", strict_cnn, "image", "a string, not a tuple")
    with registered(MODELS, "no-recipe", ModelSpec("no-recipe", strict_cnn, ("image",), "x", recipe="sgd")):
        with pytest.raises(MiaError, match="names recipe 'sgd'; known: sgd-cnn"):
            audit.resolve_config("digits", model="no-recipe")
    with registered(DATASETS, "tuple-set", DatasetSpec("tuple-set", lambda d, dl: (1, 2), "x", "tabular")):
        with pytest.raises(MiaError, match="returned tuple, not a mia.data.Dataset"):
            load_dataset("tuple-set")
    with registered(DATASETS, "kind-set", DatasetSpec("kind-set", lambda d, dl: images(12, 8), "x", "tabular")):
        with pytest.raises(MiaError, match="registered as tabular but its loader returned image data"):
            load_dataset("kind-set")
    with pytest.raises(MiaError, match="mean/std give 3 channels but the images have 8.*channels come second"):
        Dataset("nhwc", torch.zeros(4, 8, 8, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2, "image",
                mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(MiaError, match="must be torch tensors"):
        Dataset("np", np.zeros((4, 5)), np.zeros(4), 2, "tabular")


def test_a_plugin_file_imports_the_modules_beside_it(tmp_path):
    (tmp_path / "helper_for_plugin.py").write_text("VALUE = 7\n")
    (tmp_path / "uses_helper.py").write_text("import helper_for_plugin\n")
    assert load_plugins(str(tmp_path / "uses_helper.py"))


def test_noise_flip_on_rows_that_are_not_binary_fails_before_anything_trains(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing noise-flip")

    monkeypatch.setattr(audit._fit, "fit", no_training)
    rows = Dataset("real-rows", torch.randn(60, 4), torch.arange(60) % 2, 2, "tabular")
    with registered(DATASETS, "real-rows", DatasetSpec("real-rows", lambda d, dl: rows, "x", "tabular",
                                                       default_model="mlp")):
        config = audit.resolve_config("real-rows", label_only=("noise-flip",))
        with pytest.raises(MiaError, match="real-rows's features are not all 0 or 1; leave it out of --attacks"):
            audit.run_audit(config, attacks="loss,noise-flip", reference_models=1, progress=False)


def test_registering_checks_the_name_and_a_cell_run_again_replaces_its_own_entry():
    def net(shape, classes, norm_layer):
        return nn.Sequential(nn.Linear(shape[0], classes))

    try:
        MODELS.register(ModelSpec("cell-net", net, ("tabular",), "x", recipe="adam"))  # the spec's own name
        edited = ModelSpec("cell-net", net, ("tabular",), "edited", recipe="adam")
        MODELS.register("cell-net", edited)  # the notebook cell run again: no "registered twice"
        assert MODELS.get("cell-net") is edited
        with pytest.raises(MiaError, match="model 'resnet18' is already registered by mia.models.resnet.resnet18; "
                                           "register yours under another name"):
            MODELS.register(ModelSpec("resnet18", net, ("tabular",), "x"))
        with pytest.raises(MiaError, match="model 'other-net' registered with a spec named 'cell-net'"):
            MODELS.register("other-net", edited)
        assert "other-net" not in MODELS and MODELS.get("resnet18").build is not net
    finally:
        MODELS._entries.pop("cell-net", None)


def test_a_model_registered_again_after_an_edit_is_checked_again():
    try:
        MODELS.register(ModelSpec("edited-net", lambda s, c, n: nn.Linear(s[0], c), ("tabular",), "x"))
        build_model("edited-net", (5,), 3)
        MODELS.register(ModelSpec("edited-net", lambda s, c, n: _Returns(s[0], c, lambda z: {"logits": z}),
                                  ("tabular",), "x"))
        with pytest.raises(MiaError, match="got dict with keys logits"):
            build_model("edited-net", (5,), 3)
    finally:
        MODELS._entries.pop("edited-net", None)


def test_a_model_that_ignores_norm_layer_is_told_so_not_to_pass_the_norm_gn_it_passed():
    from mia.fl.config import FLConfig

    def bn_always(shape, classes, norm_layer):  # norm_layer ignored, as many users' own models do
        return nn.Sequential(nn.Conv2d(shape[0], 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, classes))

    with registered(MODELS, "bn-always", ModelSpec("bn-always", bn_always, ("image",), "x", recipe="adam")):
        config = audit.resolve_config("digits", model="bn-always", norm="gn", scenario="federated",
                                      fl=FLConfig(clients=2, rounds=1), defense="client-dp")
        with pytest.raises(MiaError, match="model 'bn-always' keeps BatchNorm under --norm gn: its builder must "
                                           "make its normalization layers with the norm_layer argument"):
            audit.run_audit(config, attacks="loss", reference_models=1, progress=False)


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (4, 32, 32, 3)])
def test_channels_last_images_are_a_one_line_error_naming_the_permute(shape):
    with pytest.raises(MiaError, match=r"look like N x H x W x C .*x.permute\(0, 3, 1, 2\)"):
        Dataset("nhwc", torch.zeros(shape, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2, "image")
    Dataset("patches", torch.zeros(4, 200, 3, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2, "image")


def _frozen_first_layer(shape, classes, norm_layer):
    """A fixed feature layer (a pretrained part, frozen) under a trained head: the target trains only the head."""
    net = nn.Sequential(nn.Linear(shape[0], 8), nn.ReLU(), nn.Linear(8, classes))
    net[0].requires_grad_(False)
    return net


def test_frozen_parameters_stay_frozen_when_models_train_stacked():
    """The one loop trains what requires a gradient; stacked reference models and stacked federated clients
    trained every parameter, so they no longer imitated the target."""
    from mia.defenses import make_defense
    from mia.fl.config import FLConfig
    from mia.fl.simulation import simulate
    from mia.train import TrainConfig
    from mia.train.many import train_many

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    data = Dataset("rows", x, (x[:, 0] > 0).long(), 2, "tabular")
    config = TrainConfig(epochs=2, optimizer="adam", lr=1e-2, batch_size=32, select_best=False, device="cpu")
    with registered(MODELS, "frozen-net", ModelSpec("frozen-net", _frozen_first_layer, ("tabular",), "x",
                                                    recipe="adam")):
        for stack in (True, False):
            models = train_many("frozen-net", (6,), 2, "bn", data, np.stack([np.arange(100), np.arange(100, 200)]),
                                None, config, seeds=[0, 1], progress=False, stack=stack)
            for seed, model in zip((0, 1), models):
                torch.manual_seed(seed)
                assert torch.equal(model[0].weight, _frozen_first_layer((6,), 2, None)[0].weight), stack
        split = make_split(len(data), 0)
        torch.manual_seed(0)
        initial = _frozen_first_layer((6,), 2, None)[0].weight
        model, _, _ = simulate("frozen-net", "bn", data, split, FLConfig(clients=2, rounds=1), config,
                               make_defense("none"), seed=0, progress=False, stack=True, record=False)
        assert torch.equal(model[0].weight.cpu(), initial)


class _Branching(nn.Module):
    """A user's forward that branches on its activations, which torch.vmap refuses."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.a, self.b = nn.Linear(features, 8), nn.Linear(8, classes)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h / 2 if h.mean() > 100 else h)


def test_a_model_whose_forward_vmap_refuses_trains_one_by_one():
    """It crashed the stacked reference pool, the stacked federated clients and the server's per-sample
    gradients with a vmap traceback."""
    from mia.defenses import make_defense
    from mia.fl.config import FLConfig
    from mia.fl.simulation import simulate
    from mia.train import TrainConfig
    from mia.train.many import train_many

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    data = Dataset("rows", x, (x[:, 0] > 0).long(), 2, "tabular")
    config = TrainConfig(epochs=1, optimizer="adam", lr=1e-2, batch_size=32, select_best=False, device="cpu")
    sets = np.stack([np.arange(100), np.arange(100, 200)])
    with registered(MODELS, "branching", ModelSpec("branching", lambda s, c, n: _Branching(s[0], c), ("tabular",),
                                                   "x", recipe="adam")):
        assert len(train_many("branching", (6,), 2, "bn", data, sets, None, config, seeds=[0, 1],
                              progress=False)) == 2
        with pytest.raises(MiaError, match="'branching' cannot train stacked: its forward fails under torch.vmap"):
            train_many("branching", (6,), 2, "bn", data, sets, None, config, seeds=[0, 1], progress=False,
                       stack=True)
        model, state, _ = simulate("branching", "bn", data, make_split(len(data), 0), FLConfig(clients=2, rounds=1),
                                   config, make_defense("none"), seed=0, progress=False)
        assert isinstance(model, _Branching)
        assert len(state.signals.rounds) and np.isfinite(state.signals.grad_norm).all()  # the server's view


@pytest.mark.parametrize("mean, std", [((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)), ((0.5,) * 3, (64.0,) * 3)])
def test_mean_and_std_on_the_wrong_scale_are_a_one_line_error(mean, std):
    """CIFAR's statistics written on the 0..255 scale trained on inputs near -2 everywhere, silently."""
    with pytest.raises(MiaError, match="mean/std are per channel on the 0..1 scale .*divide them by 255"):
        Dataset("scaled", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2, "image",
                mean=mean, std=std)


def test_a_dataset_registered_without_a_default_model_gets_its_kinds():
    assert DatasetSpec("rows", lambda d, dl: None, "x", "tabular").default_model == "mlp"
    assert DatasetSpec("pics", lambda d, dl: None, "x", "image").default_model == "resnet18"
    assert DatasetSpec("pics", lambda d, dl: None, "x", "image", default_model="cnn-small").default_model == "cnn-small"


def test_a_model_registered_without_a_recipe_gets_one_for_its_data():
    assert ModelSpec("rows-net", strict_cnn, ("tabular",), "x").recipe == "adam"
    assert ModelSpec("pics-net", strict_cnn, ("image",), "x").recipe == "sgd-cnn"
    assert ModelSpec("pics-net", strict_cnn, ("image", "tabular"), "x", recipe="adam-small").recipe == "adam-small"


def test_an_attack_of_the_wrong_form_is_a_one_line_error_and_a_fit_without_return_self_works():
    from mia.attacks import ATTACKS
    from mia.attacks.base import Attack, AttackSpec, ShadowSignals, run_attack
    from mia.registry import Param
    from mia.signals import Signals

    class Scaled(Attack):  # no __init__: its parameters arrive as attributes, as a Defense's do
        def fit(self, shadows):
            return self

        def decision_function(self, signals):
            return signals.logits.max(1) * self.scale

    class NoSeed(Scaled):
        def __init__(self, scale=1.0):  # an __init__ of its own that forgets the seed
            self.scale = scale

    class Forgetful(Scaled):
        scale = 1.0

        def fit(self, shadows):  # no ``return self``, as scikit-learn users sometimes write
            self.threshold_ = 0.0

    class PerClass(Forgetful):
        def decision_function(self, signals):
            return signals.logits  # N x C, not one score per sample

    scale = {"scale": Param(float, 1.0, "x")}
    with pytest.raises(MiaError, match=r"NoSeed\(scale=1.0\) must take its parameters and the seed as keyword "
                                       r"arguments: def __init__\(self, scale, seed=0\)"):
        AttackSpec("no-seed", NoSeed, "x", scale)
    with pytest.raises(MiaError, match="cls must be a subclass of mia.attacks.base.Attack"):
        AttackSpec("not-attack", object, "x")
    rng = np.random.default_rng(0)
    signals = Signals(rng.normal(size=(6, 3)).astype(np.float32), rng.integers(0, 3, 6))
    shadows = [ShadowSignals(signals, np.arange(6) % 2 == 0)]
    with registered(ATTACKS, "forgetful", AttackSpec("forgetful", Forgetful, "x")), \
            registered(ATTACKS, "scaled", AttackSpec("scaled", Scaled, "x", scale)), \
            registered(ATTACKS, "per-class", AttackSpec("per-class", PerClass, "x")):
        assert run_attack("forgetful", signals, shadows).scores.shape == (6,)
        assert np.allclose(run_attack("scaled", signals, shadows, {"scale": "3"}).scores, 3 * signals.logits.max(1))
        with pytest.raises(MiaError, match=r"decision_function returned shape \(6, 3\) for 6 samples; return one "
                                           r"score per sample, shape \(6,\)"):
            run_attack("per-class", signals, shadows)


def test_a_python_audit_notes_a_tpr_at_low_fpr_that_allows_no_false_positive_and_a_target_near_chance():
    """``mia audit`` prints the note; a notebook's report showed TPR 1.0 at 0.1 % FPR over a handful of
    non-members without it."""
    rows = Dataset("few-rows", torch.randn(100, 4, generator=torch.Generator().manual_seed(0)),
                   torch.arange(100) % 2, 2, "tabular")
    with registered(DATASETS, "few-rows", DatasetSpec("few-rows", lambda d, dl: rows, "x", "tabular")):
        config = audit.resolve_config("few-rows", train_overrides={"epochs": 1})
        report = audit.run_audit(config, attacks="loss", reference_models=1, progress=False)
    assert report.notes == ["25 non-members: tpr_at_fpr_0.01, tpr_at_fpr_0.001 allow no false positive, so each "
                            "reads the TPR at FPR 0 (docs/protocol.md, Metrics)"]
    assert report.target.test_accuracy >= 0.525  # it learned a little: no note of chance (a model that did not:)
    with registered(DATASETS, "few-rows", DatasetSpec("few-rows", lambda d, dl: rows, "x", "tabular")):
        config = audit.resolve_config("few-rows", train_overrides={"epochs": 1, "lr": 1e-9})
        report = audit.run_audit(config, attacks="loss", reference_models=1, progress=False)
    assert report.notes[1].startswith(f"the target's test accuracy {report.target.test_accuracy:.4f} is near a "
                                      "uniform guess's 0.5000 (2 classes)")


def test_a_users_loader_or_builder_that_raises_is_a_one_line_error_naming_its_line():
    def loader(data_dir, download):
        return {"rows": [1, 2]}["labels"]  # a bug in the user's own loader

    def builder(shape, classes, norm_layer):
        return nn.Linear(shape[1], classes)  # and one in their builder: rows have one dimension

    with registered(DATASETS, "buggy-set", DatasetSpec("buggy-set", loader, "x", "tabular")):
        with pytest.raises(MiaError, match=r"dataset buggy-set: its loader failed: KeyError: 'labels' "
                                           r"\(test_plugins.py:\d+\)") as err:
            load_dataset("buggy-set")
        assert isinstance(err.value.__cause__, KeyError)  # chained, for a notebook's traceback
    with registered(MODELS, "buggy-net", ModelSpec("buggy-net", builder, ("tabular",), "x")):
        with pytest.raises(MiaError, match=r"model .buggy-net.: its builder failed: IndexError: .*\(test_plugins.py"):
            build_model("buggy-net", (5,), 3)


def test_best_threshold_is_the_cut_an_attack_sets_as_its_threshold():
    """An attack's ``fit`` sets ``threshold_`` with one call; it unpacked arrays of :func:`fit_thresholds` before."""
    from mia.attacks import best_threshold

    assert best_threshold([0.1, 0.2, 0.8, 0.9], np.array([0, 0, 1, 1], bool)) == pytest.approx(0.5)
    assert best_threshold(np.array([3.0, 1.0]), np.array([1, 0], bool)) == pytest.approx(2.0)


def test_a_defense_of_the_wrong_form_is_a_one_line_error_when_registered():
    """As an attack's: a class that is no Defense, or an __init__ without the seed, failed with a TypeError
    traceback in the audit (and in every trial of a study)."""
    from mia.defenses import Defense, DefenseSpec, HyperParam

    class NoSeed(Defense):
        def __init__(self, beta=0.5):
            super().__init__(beta=beta)

    beta = {"beta": HyperParam(float, 0.5, "x", low=0.0, search_range=(0.0, 1.0))}
    with pytest.raises(MiaError, match=r"defense no-seed: NoSeed\(beta=0.5\) must take the seed and its "
                                       r"hyperparameters as keyword arguments: def __init__\(self, seed=0, beta\)"):
        DefenseSpec("no-seed", NoSeed, "x", params=beta)
    with pytest.raises(MiaError, match="defense not-defense: cls must be a subclass of mia.defenses.Defense"):
        DefenseSpec("not-defense", object, "x")
    assert DefenseSpec("plain", type("Plain", (Defense,), {}), "x", params=beta).cls.__name__ == "Plain"


def test_a_users_attack_that_raises_is_a_one_line_error_naming_its_line():
    """As a user's loader or builder: a bug in their fit was a traceback through mia's audit."""
    from mia.attacks import ATTACKS, Attack, AttackSpec, ShadowSignals, run_attack
    from mia.signals import Signals

    class Buggy(Attack):
        def fit(self, shadows):
            self.mean_ = {"members": 1.0}["nonmembers"]  # the user's bug

        def decision_function(self, signals):
            return signals.logits.max(1)

    rng = np.random.default_rng(0)
    signals = Signals(rng.normal(size=(6, 3)).astype(np.float32), rng.integers(0, 3, 6))
    with registered(ATTACKS, "buggy", AttackSpec("buggy", Buggy, "x")):
        with pytest.raises(MiaError, match=r"attack 'buggy': its fit failed: KeyError: 'nonmembers' "
                                           r"\(test_plugins.py:\d+\)") as err:
            run_attack("buggy", signals, [ShadowSignals(signals, np.arange(6) % 2 == 0)])
    assert isinstance(err.value.__cause__, KeyError)  # chained, for a notebook's traceback


BUGGY_DEFENSE = '''
import torch.nn.functional as F

from mia.defenses import DEFENSES, Defense, DefenseSpec


class Buggy(Defense):
    def loss(self, logits, targets, labels, epoch):
        return F.cross_entropy(logits, targets) * self.wieght  # the user's typo
'''


def test_an_exception_in_a_users_defense_hook_is_a_one_line_error_naming_its_line(plugin_dir):
    """A hook the training loop calls deep inside mia: the command names the user's line, no traceback."""
    (plugin_dir / "buggy.py").write_text(BUGGY_DEFENSE + 'DEFENSES.register(DefenseSpec("buggy", Buggy, "x"))\n')
    done = run([MIA, "train", "--dataset", "blobs", "--defense", "buggy", "--epochs", "1", "--quiet"], plugin_dir,
               plugins="my_models.py,buggy.py")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("Error: your code failed: AttributeError: 'Buggy' object has no "
                                                     "attribute 'wieght' (buggy.py:9, in loss)")
    from mlflow.tracking import MlflowClient  # the run says so too: what `mia tune` shows for a failed trial

    client = MlflowClient(f"sqlite:///{plugin_dir / 'mlflow.db'}")
    (failed,) = client.search_runs([client.get_experiment_by_name("mia").experiment_id])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mia.failure_reason"].endswith("'wieght' (buggy.py:9, in loss)")


def test_only_an_exception_the_users_own_code_raised_is_theirs():
    from mia.plugins import users_failure
    from mia.signals import entropy

    def users_forward():
        return torch.zeros(2, 3) @ torch.zeros(2, 3)  # torch raises; the user's line called it

    with pytest.raises(RuntimeError) as err:
        users_forward()
    assert re.fullmatch(r"RuntimeError: mat1 and mat2 shapes cannot be multiplied .*"
                        r"\(test_plugins.py:\d+, in users_forward\)", users_failure(err.value))
    with pytest.raises(Exception) as err:
        entropy("not logits")  # fails inside mia (called from here): mia's, shown whole
    assert users_failure(err.value) is None
