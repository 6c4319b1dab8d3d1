"""``mia report``: Pareto fronts by hand, and the report of real attack runs in a tracking store."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from entrypoints.cli import main
from mia.report.frontier import frontier_table, pareto_mask


def test_pareto_mask_keeps_exactly_the_non_dominated_points():
    utility = np.array([0.9, 0.8, 0.85, 0.7, 0.9, np.nan])
    leakage = np.array([0.6, 0.5, 0.55, 0.52, 0.7, 0.1])
    # (0.9, 0.7) is dominated by (0.9, 0.6); (0.7, 0.52) by (0.8, 0.5); NaN rows are never on the front
    assert pareto_mask(utility, leakage).tolist() == [True, True, True, False, False, False]
    # the same leakage at lower utility is dominated too (random points below never tie)
    assert pareto_mask([0.9, 0.8, 0.7, 0.7], [0.5, 0.5, 0.4, 0.45]).tolist() == [True, False, True, False]
    rng = np.random.default_rng(0)
    u, lk = rng.random(200), rng.random(200)
    by_hand = [not any((u[j] >= u[i]) and (lk[j] <= lk[i]) and (u[j] > u[i] or lk[j] < lk[i]) for j in range(200))
               for i in range(200)]
    assert pareto_mask(u, lk).tolist() == by_hand


def test_frontier_table_is_per_defense():
    rows = pd.DataFrame({"defense": ["a", "a", "b", "b"], "test_accuracy": [0.9, 0.8, 0.7, 0.6],
                         "leak": [0.6, 0.7, 0.4, 0.5]})
    front = frontier_table(rows, "leak")
    assert front["test_accuracy"].tolist() == [0.9, 0.7]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _use_store(monkeypatch, folder) -> None:
    """Run in ``folder`` with its ``mlflow.db``, as the ``mlflow_store`` fixture does."""
    import mlflow

    monkeypatch.chdir(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)


@pytest.fixture(scope="module")
def audited_store(tmp_path_factory, migrated_db):
    """One store for the tests that only read it (audited once): an undefended audit (loss, mentr), a
    label-smoothing one that ran entropy as well, and a DP-SGD one whose epsilon sets its noise multiplier."""
    folder = tmp_path_factory.mktemp("report-store")
    shutil.copy(migrated_db, folder / "mlflow.db")
    fast = ["--epochs", "2", "--quiet", "--reference-models", "1"]
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        _use_store(mp, folder)
        for name, args in (("none", ["--attacks", "loss,mentr"]),
                           ("label-smoothing", ["--attacks", "loss,mentr,entropy", "--defense", "label-smoothing",
                                                "--defense-param", "smoothing=0.2"]),
                           ("dp-sgd", ["--attacks", "loss,mentr", "--defense", "dp-sgd",
                                       "--defense-param", "epsilon=2"])):
            output = invoke("audit", *fast, *args).output
            found = re.search(r"target run: ([0-9a-f]{32})\s+attack run: ([0-9a-f]{32})", output)
            assert found, output
            ids[name] = {"train": found.group(1), "attack": found.group(2)}
    return folder, ids


@pytest.fixture
def audited(audited_store, monkeypatch):
    """The ids of :func:`audited_store`'s runs, with the test running in that store."""
    folder, ids = audited_store
    _use_store(monkeypatch, folder)
    return ids


def test_report_of_real_runs_writes_frontier_html_and_csv(audited, tmp_path):
    attack_id = audited["none"]["attack"]
    out = tmp_path / "report"
    result = invoke("report", "--leakage", "leakage.max_auc", "--roc", attack_id, "--out", str(out))
    assert result.exit_code == 0, result.output
    # the terminal's front: each run's own parameters in one column, not a mostly empty column per parameter
    assert "smoothing=0.2" in result.output and "NaN" not in result.output
    assert {"frontier.png", "roc.png", "report.html", "runs.csv"} <= {p.name for p in out.iterdir()}
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["defense"]) == ["dp-sgd", "label-smoothing", "none"]
    # the ROC drawn is the chosen run's strongest attack by its logged AUC (a mutant drawing the weakest survived)
    logged = runs.set_index("run_id").loc[attack_id]
    assert logged["loss.auc"] != logged["mentr.auc"]
    strongest = max(("loss", "mentr"), key=lambda a: logged[f"{a}.auc"])
    assert f"roc.png: none {attack_id[:6]} {strongest}" in result.output
    assert runs.loc[runs["defense"] == "label-smoothing", "defense_params.smoothing"].iloc[0] == 0.2
    assert {"test_accuracy", "leakage.max_auc", "loss.auc", "mentr.tpr_at_fpr_0.001"} <= set(runs.columns)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "label-smoothing" in page
    assert "leakage.max_auc over loss, mentr;" in page  # recomputed over the attacks all runs ran: it says so
    assert list(runs.columns[:8]) == ["run_id", "target_run_id", "scenario", "dataset", "model", "defense",
                                      "front", "test_accuracy"]
    assert not runs.isna().all().any()  # no column that no run has
    missing = invoke("report", "--leakage", "no.such.metric", "--out", str(out))
    assert missing.exit_code != 0 and "no metric" in missing.output
    assert "e.g. leakage.max_auc, leakage.max_tpr_at_fpr_0.001" in missing.output  # the summaries first
    assert "max-tpr, max-auc" in missing.output  # and mia tune's names
    (tmp_path / "a-file").write_text("")
    unwritable = invoke("report", "--out", str(tmp_path / "a-file" / "report"))
    assert unwritable.exit_code == 1 and unwritable.output.startswith("Error: cannot create --out")
    assert len(unwritable.output.strip().splitlines()) == 1
    nowhere = invoke("report", "--experiment", "nope", "--out", str(tmp_path / "nowhere"))
    assert nowhere.exit_code != 0 and "no experiment 'nope'" in nowhere.output and "known: " in nowhere.output
    assert not (tmp_path / "nowhere").exists()
    # a bad --roc id is refused before anything is written
    fresh = tmp_path / "fresh"
    refused = invoke("report", "--roc", "deadbeef", "--out", str(fresh))
    assert refused.exit_code != 0 and "deadbeef" in refused.output and not fresh.exists()


def test_runs_without_the_leakage_metric_are_counted_apart_not_called_dominated(audited, tmp_path):
    # only the label-smoothing audit ran entropy: the other two runs have no entropy.auc, and are not dominated
    result = invoke("report", "--leakage", "entropy.auc", "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert "note: 2 attack runs have no entropy.auc and are left out of the fronts" in result.output
    assert "dominated" not in result.output
    assert "the fronts hold 1 of 1 target models (1 attack run with entropy.auc)" in result.output
    assert len(pd.read_csv(tmp_path / "report" / "runs.csv")) == 3  # runs.csv still has every run


def test_a_report_refused_for_its_leakage_writes_nothing(audited, tmp_path):
    """Only the label-smoothing audit ran entropy: kept alone, the undefended run has no entropy.auc. The
    refusal came after runs.csv was written: a new folder held it alone, an older report a runs.csv of
    other runs than its page and plot."""
    out = tmp_path / "report"
    refused = invoke("report", "--leakage", "entropy.auc", "--runs", audited["none"]["attack"], "--out", str(out))
    assert refused.exit_code == 1 and "none of the 1 attack runs read has entropy.auc" in refused.output
    assert not out.exists()


def test_leakage_takes_the_names_of_mia_tune(audited, tmp_path):
    from tuning.objective import LEAKAGE

    for name, (metric, _) in LEAKAGE.items():
        short = invoke("report", "--leakage", name, "--out", str(tmp_path / "short"))
        full = invoke("report", "--leakage", f"leakage.max_{metric}", "--out", str(tmp_path / "full"))
        assert short.exit_code == 0, short.output
        assert f"leakage.max_{metric}" in short.output
        same = full.output.replace(str(tmp_path / "full"), str(tmp_path / "short"))
        assert short.output == same  # the same front, the same metric named


def test_errors_say_what_a_wrong_run_id_is_and_which_store_was_read(audited, tmp_path):
    train, attack = audited["none"]["train"], audited["none"]["attack"]
    unknown = invoke("report", "--runs", "deadbeef", "--out", str(tmp_path / "a"))
    assert unknown.exit_code == 1 and "deadbeef was not found among the 3 finished attack runs of sqlite:///" \
        in unknown.output
    for option in ("--runs", "--roc"):
        trained = invoke("report", option, train, "--out", str(tmp_path / "b"))
        assert trained.exit_code == 1
        assert f"{option}: {train} is a training run, and {option} takes attack runs: its own are {attack}" \
            in trained.output
    left_out = invoke("report", "--runs", attack, "--roc", audited["dp-sgd"]["attack"], "--out", str(tmp_path / "c"))
    assert left_out.exit_code == 1 and "is left out by --runs" in left_out.output
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before anything is written


def test_an_empty_store_is_named_and_a_missing_one_is_not_created(mlflow_store, monkeypatch):
    import mlflow

    empty = invoke("report", "--out", "report")
    uri = f"sqlite:///{mlflow_store / 'mlflow.db'}"
    assert empty.exit_code == 1 and f"no finished attack runs in {uri}" in empty.output
    elsewhere = mlflow_store / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # the default: the folder's own mlflow.db
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    try:
        missing = invoke("report", "--out", "report")
        attacked = invoke("attack", "--run-id", "abc", "--attacks", "loss")  # likewise any command that reads a run
    finally:
        mlflow.set_tracking_uri(uri)  # no relative store left for the tests that follow
    assert missing.exit_code == 1 and "nothing to report: no tracking store at sqlite:///mlflow.db" in missing.output
    assert attacked.exit_code == 1 and "run 'abc' not found: no tracking store at" in attacked.output
    assert list(elsewhere.iterdir()) == []  # no empty mlflow.db left behind, and no report


def test_dp_runs_show_the_noise_multiplier_they_trained_with(audited, tmp_path):
    import mlflow

    trained = mlflow.get_run(audited["dp-sgd"]["train"]).data.metrics["dp.noise_multiplier"]
    assert abs(trained - 1.0) > 0.01  # epsilon set it: the parameter's default of 1 went unused
    result = invoke("report", "--leakage", "max-auc", "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "dp-sgd" in line)
    assert f"noise_multiplier={trained:g}" in line and "noise_multiplier=1 " not in line + " "
    runs = pd.read_csv(tmp_path / "report" / "runs.csv").set_index("defense")
    assert runs.loc["dp-sgd", "defense_params.noise_multiplier"] == 1.0  # as logged
    assert runs.loc["dp-sgd", "dp.noise_multiplier"] == pytest.approx(trained)


def test_a_pruned_dp_run_shows_the_noise_its_fine_tuning_trained_with(monkeypatch):
    """A pruning run's DP fine-tuning logs its noise as ``finetune.dp.noise_multiplier``: the tables show that one,
    as they show a DP training run's (a mutant reading only ``dp.noise_multiplier`` survived)."""
    import importlib
    from types import SimpleNamespace

    from mia import tracking

    report = importlib.import_module("entrypoints.report")
    metrics = {"dense": {"dp.noise_multiplier": 1.7}, "pruned": {"finetune.dp.noise_multiplier": 2.5}}
    monkeypatch.setattr(tracking, "get_run", lambda run_id: SimpleNamespace(data=SimpleNamespace(metrics=metrics[run_id])))
    rows = pd.DataFrame({"target_run_id": ["dense", "pruned", "plain"],
                         "defense_params.noise_multiplier": ["1", "1", None]})
    shown = report._effective_params(report._with_trained_noise(rows))
    assert shown["dp.noise_multiplier"].tolist()[:2] == [1.7, 2.5] and shown["dp.noise_multiplier"].isna().iloc[2]
    assert shown["defense_params.noise_multiplier"].tolist()[:2] == ["1.7", "2.5"]
    assert shown["defense_params.noise_multiplier"].isna().iloc[2]


def test_fronts_are_per_setting_where_runs_mix_scenarios_datasets_or_models():
    from mia.report.frontier import per_setting

    rows = pd.DataFrame({"scenario": ["centralized", "federated", "centralized"], "defense": ["none", "none", "dp-sgd"],
                         "dataset": "digits", "model": "mlp", "test_accuracy": [0.9, 0.5, 0.8],
                         "leak": [0.7, 0.55, 0.6]})
    assert per_setting(rows)["front"].tolist() == ["centralized/none", "federated/none", "centralized/dp-sgd"]
    assert per_setting(rows)["defense"].tolist() == ["none", "none", "dp-sgd"]  # the name stays, for pandas users
    assert len(frontier_table(per_setting(rows), "leak", by="front")) == 3  # the federated run no longer hides
    one = rows[rows["scenario"] == "centralized"]
    assert per_setting(one)["front"].tolist() == ["none", "dp-sgd"]
    # an undefended run of another dataset and model is not the reference point of a digits defense
    mixed = one.assign(dataset=["purchase-synth", "digits"], model=["fc", "mlp"])
    assert per_setting(mixed)["front"].tolist() == ["purchase-synth/fc/none", "digits/mlp/dp-sgd"]


def test_a_model_attacked_several_times_is_one_point_at_its_worst_case():
    from mia.report.frontier import worst_per_target

    rows = pd.DataFrame({"run_id": ["a1", "a2", "a3", "b1", "t1"], "target_run_id": ["A", "A", "A", "B", None],
                         "defense": ["none", "none", "none", "dp-sgd", "dp-sgd"],
                         "test_accuracy": [0.9, 0.9, 0.9, 0.8, 0.7], "leak": [0.6, 0.75, 0.65, 0.7, 0.5]})
    points = worst_per_target(rows, "leak")
    assert points["run_id"].tolist() == ["a2", "b1", "t1"]  # A at its most leaky run; a run without target stays
    # the front of "none" is A at 0.75, not its least leaky attack run
    assert frontier_table(points, "leak").set_index("defense").loc["none", "leak"] == 0.75


def test_leakage_summaries_compare_the_attacks_every_run_has():
    from mia.report.frontier import common_leakage

    rows = pd.DataFrame({"loss.auc": [0.6, 0.7], "rmia.auc": [0.9, np.nan], "dense.loss.auc": [0.99, 0.99],
                         "leakage.max_auc": [0.9, 0.7]})
    values, attacks = common_leakage(rows, "leakage.max_auc")
    assert attacks == ["loss"] and values.tolist() == [0.6, 0.7]


def test_frontier_figure_keeps_its_legend_off_the_points_and_tells_its_groups_apart():
    import matplotlib.pyplot as plt

    from mia.report.frontier import frontier_figure

    rows = pd.DataFrame([{"front": f"d{i:02d}", "test_accuracy": 0.5 + 0.02 * i + 0.01 * j, "leak": 1.0 - 0.03 * j}
                         for i in range(20) for j in range(3)]
                        + [{"front": f"{s}/none", "test_accuracy": 0.9, "leak": 1.0}
                           for s in ("centralized", "pruning")])  # on the same spot
    fig = frontier_figure(rows, "leak", by="front")
    try:
        ax = fig.axes[0]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
        fronts = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert len(fronts) == 20 and len({line.get_color() for line in fronts}) == 20  # tab10's cycle repeated at 10
        undefended = [c for c in ax.collections if c.get_label().startswith("undefended")]
        assert [c.get_label() for c in undefended] == ["undefended (centralized)", "undefended (pruning)"]
        # the same spot: hollow, other shapes and sizes, so that one does not hide the other
        assert all(len(c.get_facecolor()) == 0 or c.get_facecolor()[0][3] == 0 for c in undefended)
        shapes = {(tuple(c.get_paths()[0].vertices.round(3).ravel()), float(c.get_sizes()[0])) for c in undefended}
        assert len(shapes) == 2 and undefended[0].get_sizes()[0] != undefended[1].get_sizes()[0]
    finally:
        plt.close(fig)


def test_frontier_figure_names_the_shared_data_and_the_attacks_its_leakage_is_over():
    import matplotlib.pyplot as plt

    from mia.report.frontier import frontier_figure

    rows = pd.DataFrame({"front": ["a", "none"], "dataset": "digits", "model": ["mlp", "mlp"],
                         "test_accuracy": [0.9, 0.8], "leakage.max_auc": [0.6, 0.7]})
    fig = frontier_figure(rows, "leakage.max_auc", by="front", attacks=["loss", "nn"])
    try:
        assert fig.axes[0].get_title() == "privacy-utility frontiers: digits / mlp"
        assert "leakage.max_auc over loss, nn" in fig.axes[0].get_ylabel()
    finally:
        plt.close(fig)


def test_plot_titles_describe_the_target_and_sixteen_attacks_get_sixteen_lines():
    from mia.audit import TargetConfig
    from mia.fl.config import FLConfig
    from mia.prune.schedule import PruneConfig
    from mia.report.figure import CHANCE, describe, line_style

    config = TargetConfig(dataset="digits", model="mlp", defense="relaxloss", defense_params={"alpha": 1.2345678})
    assert describe(config) == "digits / mlp, defense relaxloss (alpha=1.235)"
    assert describe(config, params=False) == "digits / mlp, defense relaxloss"
    fl = TargetConfig(model="mlp", scenario="federated", fl=FLConfig(clients=4, rounds=6))
    assert describe(fl) == "digits / mlp, federated (4 clients, 6 rounds), defense none"
    pruned = TargetConfig(model="mlp", scenario="pruning", prune=PruneConfig(sparsity=0.6))
    assert "pruned (l1-unstructured, sparsity 0.6)" in describe(pruned)
    styles = {tuple(sorted(line_style(i).items())) for i in range(16)}
    assert len(styles) == 16 and all(CHANCE["ls"] != dict(s)["ls"] for s in styles)


def test_html_tables_print_small_and_integer_numbers_as_they_are(tmp_path):
    from mia.report.frontier import write_html

    table = pd.DataFrame({"test_accuracy": [0.87083, 0.5], "defense_params.delta": [1e-05, np.nan],
                          "defense_params.epochs": [0.0, np.nan], "defense_params.lr": [0.004, 0.1]})
    page = write_html(tmp_path / "page.html", "t", {}, {"front": table}).read_text()
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert cells == ["0.8708", "1e-05", "0", "0.004", "0.5", "", "", "0.1"]
