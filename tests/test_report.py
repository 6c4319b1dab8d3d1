"""``mia report``: Pareto fronts by hand, and the report of real attack runs in a tracking store."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from click.testing import CliRunner

from entrypoints.cli import main
from mia.report.frontier import frontier_table, pareto_mask


def test_pareto_mask_keeps_exactly_the_non_dominated_points():
    utility = np.array([0.9, 0.8, 0.85, 0.7, 0.9, np.nan])
    leakage = np.array([0.6, 0.5, 0.55, 0.52, 0.7, 0.1])
    # (0.9, 0.7) is dominated by (0.9, 0.6); (0.7, 0.52) by (0.8, 0.5); NaN rows are never on the front
    assert pareto_mask(utility, leakage).tolist() == [True, True, True, False, False, False]
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


def test_report_of_real_runs_writes_frontier_html_and_csv(mlflow_store, tmp_path):
    fast = ["--epochs", "2", "--quiet", "--reference-models", "1", "--attacks", "loss,mentr"]
    first = invoke("audit", *fast)
    invoke("audit", *fast, "--defense", "label-smoothing", "--defense-param", "smoothing=0.2")
    attack_id = re.search(r"attack run: ([0-9a-f]{32})", first.output).group(1)
    out = tmp_path / "report"
    result = invoke("report", "--leakage", "leakage.max_auc", "--roc", attack_id, "--out", str(out))
    assert result.exit_code == 0, result.output
    # the terminal's front: each run's own parameters in one column, not a mostly empty column per parameter
    assert "smoothing=0.2" in result.output and "NaN" not in result.output
    assert {"frontier.png", "roc.png", "report.html", "runs.csv"} <= {p.name for p in out.iterdir()}
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["defense"]) == ["label-smoothing", "none"]
    assert runs.loc[runs["defense"] == "label-smoothing", "defense_params.smoothing"].iloc[0] == 0.2
    assert {"test_accuracy", "leakage.max_auc", "loss.auc", "mentr.tpr_at_fpr_0.001"} <= set(runs.columns)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "label-smoothing" in page
    assert list(runs.columns[:8]) == ["run_id", "target_run_id", "scenario", "dataset", "model", "defense",
                                      "front", "test_accuracy"]
    assert not runs.isna().all().any()  # no column that no run has
    missing = invoke("report", "--leakage", "no.such.metric", "--out", str(out))
    assert missing.exit_code != 0 and "no metric" in missing.output
    assert "e.g. leakage.max_auc, leakage.max_tpr_at_fpr_0.001" in missing.output  # the summaries first
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
