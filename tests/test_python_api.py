"""The untracked audit of README's "From Python" section: it runs as printed, and it is the tracked audit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mia import audit
from mia.attacks import selection
from mia.errors import MiaError
from mia.data import make_split
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
    assert len(namespace["scores"]) == len(namespace["member"]) == len(report.split.query()[0])
    assert (mlflow_store / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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


def test_a_pruning_target_and_its_dense_original_are_audited_as_mia_audit_does(mlflow_store, monkeypatch):
    """RSW fine-tunes on the mem-scores of the dense recipe's pool, which the dense original's attack reuses."""
    import mia.defenses.memorization
    from mia.experiment import audit_run

    monkeypatch.setattr(mia.defenses.memorization, "estimate_mem_scores",
                        lambda *a, **k: pytest.fail("the defense estimated its own mem-scores, not the pool's"))
    config = audit.resolve_config("digits", seed=0, train_overrides={"epochs": 8}, scenario="pruning",
                                  prune=PruneConfig(sparsity=0.6, finetune_epochs=2), defense="rsw",
                                  defense_params={"mem_models": 2, "window": 20})
    report = audit.run_audit(config, attacks="loss,rmia", reference_models=2, progress=False)
    assert report.target.defense_metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert report.reference_models_trained == 4  # 2 pruned references, 2 dense ones: mem-scores, dense original
    tracked = audit_run(config, attacks="loss,rmia", reference_models=2, progress=False)
    for ours, theirs in ((report.results, tracked.results), (report.dense_results, tracked.dense)):
        assert [r.name for r in ours] == [r.name for r in theirs] == ["loss", "rmia"]
        for a, b in zip(ours, theirs):
            assert a.metrics == pytest.approx(b.metrics, abs=1e-9), a.name
    summary = report.summary()
    assert summary["sparsity"] == tracked.sparsity == report.target.defense_metrics["sparsity"]
    assert summary["dense.test_accuracy"] == pytest.approx(tracked.dense_test_accuracy)
    assert summary["dense.leakage.max_auc"] == max(r.metrics["auc"] for r in report.dense_results)
    scores, member = report.scores("rmia", dense=True)
    assert len(scores) == len(member) == len(report.split.query()[0]) and member.sum() == (~member).sum()
    assert "pruning digits/mlp" in repr(report) and len(repr(report)) < 600  # not the score arrays
    assert report.plot_roc(mlflow_store / "dense.png", attacks=["rmia"], dense=True).stat().st_size > 1000


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
    ({"attacks": "loss,cos-iii"}, "federated run"),
    ({"attacks": "lira-online", "pool_mode": "offline"}, "use the online pool"),
    ({"attacks": "loss", "pool_mode": "Offline"}, "unknown pool mode 'Offline'"),
    ({"attacks": "loss", "reference_models": 0}, "at least 1"),
    ({"attacks": "loss", "reference_models": 2.5}, "whole number"),
])
def test_bad_requests_are_one_line_errors_before_anything_trains(kwargs, match, tmp_path, monkeypatch):
    config = audit.resolve_config("digits")
    monkeypatch.setattr(audit._fit, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(MiaError, match=match) as err:
        audit.run_audit(config, cache_dir=str(tmp_path), progress=False, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fields, match", [
    ({"scenario": "prune"}, "unknown scenario 'prune'"),
    ({"defense": "client-dp"}, "applies to federated, not centralized"),
    ({"scenario": "pruning", "defense": "selena"}, "applies to centralized, not pruning"),
    ({"prune": PruneConfig()}, "prune= configures scenario 'pruning'"),
    ({"label_only": ["bogus"]}, "unknown label-only signal 'bogus'"),
    ({"train_overrides": {"epochs": "3"}}, "epochs='3' must be int"),
    ({"train_overrides": {"device": "cuda:7"}}, "no usable CUDA device|has 1 CUDA device"),
    ({"scenario": "pruning", "defense": "rmr", "defense_params": {"mem_scores_csv": "/nope.csv"}}, "no such file"),
    ({"defense": "dp-sgd", "defense_params": {"epsilon": -1}}, "epsilon"),
    ({"dataset_params": {"bogus": 1}}, "takes no parameters"),
    # what the command line's option ranges refuse; these trained, or failed deep inside torch.optim (nan)
    ({"train_overrides": {"epochs": 0}}, "epochs must be >= 1, got 0"),
    ({"train_overrides": {"lr": float("nan")}}, "lr must be a finite number > 0, got nan"),
    ({"train_overrides": {"weight_decay": -1.0}}, "weight_decay must be a finite number >= 0"),
    ({"train_overrides": {"optimizer": "adamw"}}, "unknown optimizer 'adamw'"),
    ({"norm": "ln"}, "unknown norm 'ln'"),
    # a notebook's slips: these were a TypeError naming TargetConfig.__init__, or an AttributeError in the split
    ({"epochs": 3}, r"epochs is set through train_overrides=\{'epochs': ...\}"),
    ({"train": {"epochs": 3}}, "train is set through train_overrides"),
    ({"bogus": 1}, "resolve_config has no field 'bogus'"),
    ({"split": {"member_fraction": 0.3}}, r"split= takes a .*SplitConfig, got dict"),
])
def test_configs_are_checked_where_they_are_made_as_on_the_command_line(fields, match):
    with pytest.raises(MiaError, match=match) as err:
        audit.resolve_config("digits", **fields)
    assert "\n" not in str(err.value)


def test_run_audit_refuses_what_is_not_a_config_in_one_line(tmp_path):
    with pytest.raises(MiaError, match=r"expected a TargetConfig \(mia.audit.resolve_config\(...\)\), got str 'digits'"):
        audit.run_audit("digits", cache_dir=str(tmp_path), progress=False)


def test_a_defense_setting_has_one_config_however_it_is_spelt():
    """The pool key (so the reference models' seeds) hashes the defense parameters: ``epsilon=8`` and
    ``epsilon=8.0`` gave different pools and different AUCs than the command line's full typed dict."""
    configs = [audit.resolve_config("digits", defense="dp-sgd", defense_params=p)
               for p in ({"epsilon": 8}, {"epsilon": 8.0}, {"EPSILON": "8"})]
    assert configs[0] == configs[1] == configs[2] and configs[0].defense_params["epsilon"] == 8.0
    assert len(configs[0].defense_params) > 1  # every default filled in, as the command line stores them
    assert audit.resolve_config("digits", scenario="federated").fl is not None  # the federation's defaults
    assert audit.resolve_config("digits", label_only="aug, noise-flip").label_only == ["aug", "noise-flip"]


def test_all_is_all_however_it_is_spelt():
    assert selection.as_asked(" all") == selection.as_asked(["all"]) == selection.as_asked("ALL") == "all"
    assert selection.as_asked(["loss", "rmia"]) == ["loss", "rmia"] and selection.as_asked("loss") == "loss"


def test_attack_parameters_only_the_target_decides_are_checked_before_it_trains(tmp_path, monkeypatch):
    from mia.fl.config import FLConfig

    monkeypatch.setattr(audit._fit, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    monkeypatch.setattr(audit._run, "fit_federated", lambda *a, **k: pytest.fail("federated before refusing"))
    config = audit.resolve_config("digits")
    with pytest.raises(MiaError, match="1 <= l < k.*k=5, l=9"):
        audit.run_audit(config, attacks="selena-adaptive", attack_params={"selena-adaptive": {"k": 5, "l": 9}},
                        cache_dir=str(tmp_path), progress=False)
    with pytest.raises(MiaError, match="attack parameters go by attack"):
        audit.run_audit(config, attacks="loss", attack_params={"loss": "global"}, cache_dir=str(tmp_path))

    fl = FLConfig(clients=4, rounds=4, fraction=0.5, record_every=2)
    federated = audit.resolve_config("digits", scenario="federated", fl=fl)
    with pytest.raises(MiaError, match=r"round=3 is not a recorded round; recorded rounds: \[2, 4\]"):
        audit.run_audit(federated, attacks="loss-i", attack_params={"loss-i": {"round": 3}}, cache_dir=str(tmp_path))
    absent = next(r for r in (2, 4) if fl.target_client not in fl.sampled(r, federated.seed))
    with pytest.raises(MiaError, match=f"round={absent}: client 0 was not sampled"):
        audit.run_audit(federated, attacks="cos-i", attack_params={"cos-i": {"round": absent}},
                        cache_dir=str(tmp_path))


def test_the_up_front_sampling_check_predicts_the_simulation():
    from mia.fl.config import FLConfig

    config = audit.resolve_config("digits", scenario="federated", fl=FLConfig(clients=4, rounds=4, fraction=0.5))
    data = audit.load_data(config)
    split = make_split(len(data), config.seed, config.split)
    _, signals, _ = audit.fit_federated(config, data, split, progress=False)
    for i, r in enumerate(signals.rounds):
        assert set(np.flatnonzero(signals.sampled[i])) == set(config.fl.sampled(int(r), config.seed))


def test_an_audit_leaves_the_callers_random_generators_as_they_were(tmp_path):
    """Every model reseeds the global generators: a notebook's draws after an audit were the same after every
    call (the first draws of seed 0)."""
    import random

    import torch

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    config = audit.resolve_config("digits", train_overrides={"epochs": 1}, label_only=[])
    audit.run_audit(config, attacks="loss", reference_models=1, cache_dir=str(tmp_path), progress=False)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_an_attacks_scores_are_found_however_its_name_is_spelt():
    """``run_audit(attacks="RMIA")`` runs ``rmia`` (names match regardless of case); ``scores("RMIA")`` said
    there was no such result."""
    from mia.attacks import AttackOutput

    config = audit.resolve_config("digits")
    split = make_split(1797, 0, config.split)
    _, is_member = split.query()
    output = AttackOutput(np.linspace(0, 1, len(is_member)), np.zeros(len(is_member), bool))
    report = audit.Audit(config, None, split, [audit.AttackResult("rmia", output, {}, 0.0)], 0)
    scores, member = report.scores("RMIA")
    assert np.array_equal(scores, output.scores) and np.array_equal(member, is_member)
    with pytest.raises(MiaError, match="no result for attack 'lira'; this audit ran: rmia"):
        report.scores("lira")


def test_an_attack_result_shows_its_metrics_not_its_scores():
    from mia.attacks import AttackOutput

    result = audit.AttackResult("rmia", AttackOutput(np.zeros(898), np.zeros(898, bool)), {"auc": 0.5}, 1.0)
    assert repr(result) == "AttackResult(name='rmia', metrics={'auc': 0.5}, seconds=1.0)"


def test_the_pieces_the_readme_names_compose_into_run_audits_result(tmp_path):
    """README offers run_audit's pieces to users composing a protocol of their own: in the order it names them
    they give run_audit's audit (the same split, target, pool and AUCs), and find the pool it grew."""
    config = audit.resolve_config("digits", seed=1, train_overrides={"epochs": 3}, label_only=[])
    names = ["loss", "lira-offline"]
    whole = audit.run_audit(config, attacks=names, reference_models=2, pool_mode="offline",
                            cache_dir=str(tmp_path), progress=False)
    data = audit.load_data(config)
    split = audit.target_split(config, data)
    target = audit.fit_target(config, data, split, progress=False)
    signals, population = audit.target_signals(target.model, data, split, config)
    recipe = audit.attacker_config(config, released_epoch=target.best_epoch)
    plan = audit.plan_reference_pool(recipe, data, split, "offline")
    pool, growth = audit.reference_pool(plan, recipe, data, 2, tmp_path / "pools" / plan.key, progress=False)
    results = audit.attack_target("loss,lira-offline", config, data, split, signals, population, pool,
                                  progress=False)  # seeded by config.seed, as run_audit
    assert np.array_equal(split.members, whole.split.members) and growth.new == []
    assert target.test_accuracy == whole.target.test_accuracy
    assert {r.name: r.metrics["auc"] for r in results} == {n: whole.metrics[n]["auc"] for n in names}


def test_the_pieces_say_what_they_cannot_take_before_training(monkeypatch):
    monkeypatch.setattr(audit._fit, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    config = audit.resolve_config("digits")
    data = audit.load_data(config)
    federated = audit.resolve_config("digits", scenario="federated")
    unchecked = audit.TargetConfig(model="mlp", scenario="pruning", norm="layer")  # built by hand
    for config_, match in ((federated, "fit_federated"), (unchecked, "unknown norm 'layer'")):
        with pytest.raises(MiaError, match=match):
            audit.fit_target(config_, data, audit.target_split(config_, data), progress=False)
    with pytest.raises(MiaError, match=r"takes the Dataset \(audit.load_data\(config\)\), got ndarray"):
        audit.target_split(config, np.arange(100))  # the members, without the data
    with pytest.raises(MiaError, match=r"takes a mia.data.Split \(audit.target_split"):
        audit.fit_target(config, data, np.arange(100))
    split = audit.target_split(config, data)
    with pytest.raises(MiaError, match="runs the attacks it is named"):
        audit.attack_target("all", config, data, split, None, None, None)
    with pytest.raises(MiaError, match="unknown attack 'lira'"):
        audit.attack_target("loss,lira", config, data, split, None, None, None)
