"""The untracked audit of README's "From Python" section: it runs as printed, and it is the tracked audit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mia import audit
from mia.errors import MiaError
from mia.prune import PruneConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section shows one example"
    return blocks[0]


def test_the_readme_example_runs_and_gives_what_mia_audit_logs(mlflow_store, capsys):
    from mia.experiment import audit_run

    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    report, config = namespace["report"], namespace["config"]
    printed = capsys.readouterr().out
    assert "leakage.max_auc" in printed and "lira-online" in printed and "rmia" in printed
    assert list(report.metrics) == ["loss", "mentr", "lira-online", "rmia"]
    assert report.reference_models_trained == 4 and any((mlflow_store / ".mia-cache" / "pools").iterdir())
    assert len(namespace["scores"]) == len(report.split.query()[0])
    assert report.summary()["test_accuracy"] > 0.85

    # the tracked command on the same config: the same target, pool and attacks, so the same figures
    tracked = audit_run(config, attacks="loss,mentr,lira-online,rmia", reference_models=4, progress=False)
    assert [r.name for r in tracked.results] == list(report.metrics)
    for r in tracked.results:
        assert r.metrics == pytest.approx(report.metrics[r.name], abs=1e-9), r.name
    assert tracked.test_accuracy == pytest.approx(report.target.test_accuracy)

    again = audit.run_audit(config, attacks="loss,mentr,lira-online,rmia", reference_models=4, progress=False)
    assert again.reference_models_trained == 0  # the cached pool is found, not retrained
    assert again.metrics == report.metrics


def test_a_pruning_target_is_audited_after_pruning_with_its_dense_original_kept(tmp_path):
    config = audit.resolve_config("digits", seed=0, train_overrides={"epochs": 8}, scenario="pruning",
                                  prune=PruneConfig(sparsity=0.6, finetune_epochs=2))
    report = audit.run_audit(config, attacks="loss,rmia", reference_models=2, cache_dir=str(tmp_path),
                             progress=False)
    assert report.target.dense is not None and report.target.defense_metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert set(report.metrics) == {"loss", "rmia"} and report.reference_models_trained == 2


def test_a_federation_is_audited_by_the_fl_and_black_box_attacks_as_mia_audit_does(mlflow_store):
    from mia.experiment import audit_run
    from mia.fl.config import FLConfig

    config = audit.resolve_config("digits", seed=0, scenario="federated", fl=FLConfig(clients=4, rounds=3))
    attacks = "loss-ii,cos-iii,grad-diff,loss,rmia"
    report = audit.run_audit(config, attacks=attacks, reference_models=2, progress=False)
    tracked = audit_run(config, attacks=attacks, reference_models=2, progress=False)
    assert [r.name for r in tracked.results] == list(report.metrics) == ["loss-ii", "cos-iii", "grad-diff", "loss", "rmia"]
    for r in tracked.results:
        assert r.metrics == pytest.approx(report.metrics[r.name], abs=1e-9), r.name
    assert tracked.test_accuracy == pytest.approx(report.target.test_accuracy)
    assert len(report.results[0].output.scores) == len(report.federation.query)


@pytest.mark.parametrize("kwargs, match", [
    ({"scenario": "federated"}, "needs a federation"),
    ({"attacks": "loss,cos-iii"}, "federated run"),
    ({"attacks": "lira-online", "pool_mode": "offline"}, "use --pool online"),
    ({"attacks": "loss", "reference_models": 0}, "at least 1"),
])
def test_bad_requests_are_one_line_errors_before_anything_trains(kwargs, match, tmp_path, monkeypatch):
    config = audit.resolve_config("digits", scenario=kwargs.pop("scenario", "centralized"))
    monkeypatch.setattr(audit, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(MiaError, match=match) as err:
        audit.run_audit(config, cache_dir=str(tmp_path), progress=False, **kwargs)
    assert "\n" not in str(err.value)
