"""Your own models and datasets: README's plugin module, through Python and the command (``MIA_PLUGINS``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mia.errors import MiaError
from mia.models import MODELS
from mia.plugins import load_plugins

README = Path(__file__).resolve().parents[1] / "README.md"
MIA = str(Path(sys.executable).parent / "mia")


def readme_plugin() -> str:
    section = README.read_text().split("## Your own models and datasets", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


@pytest.fixture
def plugin_dir(tmp_path, migrated_db):
    """A working folder holding README's ``my_models.py`` and a migrated MLflow store."""
    (tmp_path / "my_models.py").write_text(readme_plugin())
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    return tmp_path


def run(args: list[str], folder: Path, plugins: str | None = "my_models.py") -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "MIA_CACHE": str(folder)}
    env.pop("MIA_PLUGINS", None)
    if plugins is not None:
        env["MIA_PLUGINS"] = plugins
    return subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_the_readme_plugin_makes_its_model_and_dataset_known_to_every_command(plugin_dir):
    listed = run([MIA, "datasets"], plugin_dir)
    assert listed.returncode == 0 and "blobs" in listed.stdout, listed.stderr
    assert "blobs" not in run([MIA, "datasets"], plugin_dir, plugins=None).stdout  # the plugin put it there
    info = run([MIA, "info"], plugin_dir)
    assert "plugins (MIA_PLUGINS): my_models.py" in info.stdout

    done = run([MIA, "audit", "--dataset", "blobs", "--epochs", "20", "--reference-models", "2",
                "--attacks", "loss,rmia", "--quiet"], plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["loss"], ["rmia"])}
    assert set(rows) == {"loss", "rmia"}
    assert float(rows["loss"][-1]) > 0.5  # test accuracy of small-net on 10 blobs: it learned them
    assert float(rows["loss"][1]) > 0.6  # 128 hidden units memorize 750 noisy rows: the loss attack sees it


def test_the_readme_plugin_serves_python_users_as_it_is(plugin_dir):
    code = ("import my_models\nfrom mia import audit\n"
            "r = audit.run_audit(audit.resolve_config('blobs', train_overrides={'epochs': 5}), attacks='loss',"
            " reference_models=1, progress=False)\nprint(r.config.model, r.metrics['loss']['auc'])")
    done = run([sys.executable, "-c", code], plugin_dir, plugins=None)
    assert done.returncode == 0, done.stderr[-2000:]
    model, auc = done.stdout.split()
    assert model == "small-net" and 0.0 <= float(auc) <= 1.0


def test_a_plugin_that_is_missing_or_breaks_is_a_one_line_error(plugin_dir, monkeypatch):
    missing = run([MIA, "datasets"], plugin_dir, plugins="nope.py")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"Error: MIA_PLUGINS: no plugin file nope.py (from {plugin_dir}); name a .py file or a module"]
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
    from mia import audit

    with pytest.raises(MiaError, match="unknown dataset 'blobs'.*name the module that registers it in MIA_PLUGINS"):
        audit.resolve_config("blobs")
    with pytest.raises(MiaError, match="unknown model 'small-net'.*MIA_PLUGINS"):
        audit.resolve_config("digits", model="small-net")
