"""The audit protocol on real trained models, without MLflow (the core alone)."""

from __future__ import annotations

import pytest

import numpy as np
import torch

from mia import audit
from mia.attacks import selection
from mia.attacks.reference import lira_statistics
from mia.data import make_split
from mia.errors import MiaError
from mia.prune import PruneConfig

ATTACKS = ["loss", "mentr", "nn"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A small Purchase-like task where an fc net memorizes its 750 members, and 2 reference models."""
    config = audit.resolve_config("purchase-synth", seed=0, train_overrides={"epochs": 25},
                                  dataset_params={"n": 3000})
    data = audit.load_data(config)
    split = make_split(len(data), config.seed, config.split)
    plan = audit.plan_reference_pool(config, data, split)
    pool, _ = audit.reference_pool(plan, config, data, 2, tmp_path_factory.mktemp("pool"), progress=False)
    return config, data, split, pool.shadows()


def attack_aucs(config, data, split, shadows, train_idx) -> dict[str, float]:
    target = audit.fit(config, data, train_idx, split.validation, split.nonmembers, seed=1, progress=False)
    query, is_member = split.query()
    signals = audit.query_signals(target.model, data, query, seed=0)
    results = audit.run_attacks(ATTACKS, signals, is_member, shadows, progress=False)
    return {r.name: r.metrics["auc"] for r in results}


def test_memorizing_target_leaks(setting):
    config, data, split, shadows = setting
    aucs = attack_aucs(config, data, split, shadows, split.members)
    assert min(aucs.values()) > 0.7, aucs


def test_target_that_never_saw_the_members_scores_chance(setting):
    config, data, split, shadows = setting
    # Same recipe and size, but trained on attacker data: "members" and non-members are both unseen.
    stranger = split.population[: len(split.members)]
    aucs = attack_aucs(config, data, split, shadows, stranger)
    assert all(abs(auc - 0.5) < 0.07 for auc in aucs.values()), aucs


def test_resolve_attacks():
    assert selection.resolve_attacks("all")[:2] == ["loss", "confidence"]
    assert selection.resolve_attacks("nn, loss,nn") == ["nn", "loss"]
    assert selection.resolve_attacks("LOSS,Lira-Online") == ["loss", "lira-online"]  # spelt as the registry does


def reference_metrics(dataset: str, params: dict, epochs: int, models: int, attacks: list[str], tmp_path,
                      attack_params: dict | None = None, stranger: bool = False, model: str | None = None):
    """The attacks' metrics against a target of the recipe; ``stranger``: one trained on as many
    population rows instead, so that its "members" are as unseen as its non-members."""
    config = audit.resolve_config(dataset, model=model, seed=0, train_overrides={"epochs": epochs}, dataset_params=params)
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    rows = split.population[:len(split.members)] if stranger else split.members
    target = audit.fit(config, data, rows, split.validation, split.nonmembers, seed=0, progress=False)
    audited, population = audit.target_signals(target.model, data, split, config)
    recipe = audit.attacker_config(config, released_epoch=target.best_epoch)  # as `mia attack`
    plan = audit.plan_reference_pool(recipe, data, split)
    pool, _ = audit.reference_pool(plan, recipe, data, models, tmp_path, progress=False)
    _, is_member = split.query()
    results = audit.run_attacks(attacks, audited, is_member, pool.shadows(), attack_params, progress=False,
                                reference=pool.reference(audited, population, split.population))
    return {r.name: r.metrics for r in results}


def test_lira_online_beats_the_global_threshold_at_low_fpr(tmp_path):
    # the mlp, which trains its 8 references stacked: 8 s (the default fc net one by one: 38 s, 0.72 against 0.58)
    m = reference_metrics("purchase-synth", {"n": 3000}, 25, 8, ["lira-online", "global-threshold"], tmp_path,
                          model="mlp")
    lira, base = m["lira-online"]["tpr_at_fpr_0.01"], m["global-threshold"]["tpr_at_fpr_0.01"]
    assert lira > base + 0.1, (lira, base)


def test_reference_attacks_on_a_target_that_never_saw_the_members_score_chance(tmp_path):
    m = reference_metrics("digits", {}, 30, 8, ["lira-online", "lira-offline", "rmia"], tmp_path, stranger=True)
    assert all(abs(r["auc"] - 0.5) < 0.07 for r in m.values()), {k: r["auc"] for k, r in m.items()}


def test_reference_models_stop_where_the_target_did():
    """An undefended centralized target's references run its schedule and stop at its released epoch."""
    config = audit.resolve_config("digits", seed=0, train_overrides={"epochs": 30})
    recipe = audit.attacker_config(config, released_epoch=12)
    assert (recipe.train.stop_epoch, recipe.train.select_best, recipe.train.epochs) == (13, False, 30)
    defended = audit.resolve_config("digits", defense="relaxloss")
    assert audit.attacker_config(defended, released_epoch=12).train.stop_epoch == 13  # non-adaptive: plain loop
    assert audit.attacker_config(defended, adaptive=True, released_epoch=12) == defended  # the defense decides
    assert audit.attacker_config(config) == config  # the epoch unknown: the recipe's own selection
    pruning = audit.resolve_config("digits", scenario="pruning", prune=PruneConfig(sparsity=0.5, iterations=2))
    assert audit.attacker_config(pruning, released_epoch=12) == pruning  # fine-tuning epochs unknown
    stopped = audit.attacker_config(pruning, released_epoch=12, finetune_epochs=[3, 0])
    assert (stopped.train.stop_epoch, stopped.prune.finetune_stops) == (13, [4, 1])
    assert audit.attacker_config(audit.dense_config(pruning), released_epoch=12).train.stop_epoch == 13


def test_pruned_reference_models_stop_each_fine_tuning_where_the_target_did(tmp_path):
    """The target records each step's released fine-tuning epoch; its references run that many, calibrated."""
    config = audit.resolve_config("digits", seed=0, train_overrides={"epochs": 30}, scenario="pruning",
                                  prune=PruneConfig(sparsity=0.6, iterations=2, finetune_epochs=6))
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    target = audit.fit(config, data, split.members, split.validation, split.nonmembers, seed=0, progress=False)
    assert len(target.finetune_epochs) == 2 and all(0 <= e < 6 for e in target.finetune_epochs)
    recipe = audit.attacker_config(config, released_epoch=target.best_epoch, finetune_epochs=target.finetune_epochs)
    reference = audit.fit(recipe, data, split.population[:len(split.members)], split.validation, split.nonmembers,
                          seed=1, progress=False)
    assert len(reference.dense.history) == target.best_epoch + 1
    assert reference.finetune_epochs == [e for e in target.finetune_epochs]  # it ran them and kept the last
    with pytest.raises(MiaError, match="finetune_stops must hold one epoch count"):
        PruneConfig(iterations=2, finetune_epochs=6, finetune_stops=[7, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_stopped_reference_models_are_calibrated_to_the_target(seed, tmp_path):
    """Selecting their own epoch on the attacker's smaller validation set left the references less
    confident than the target (its non-members 0.35 and 0.80 OUT standard deviations above the OUT
    means on these seeds); stopped where the target stopped, both sides sit within 0.25 of their
    Gaussians' means."""
    config = audit.resolve_config("digits", seed=seed, train_overrides={"epochs": 30})
    data = audit.load_data(config)
    split = make_split(len(data), seed, config.split)
    target = audit.fit(config, data, split.members, split.validation, split.nonmembers, seed=seed, progress=False)
    audited, population = audit.target_signals(target.model, data, split, config)

    def offsets(recipe, folder):
        return reference_offsets(recipe, data, split, audited, population, folder, 16)

    selected = offsets(config, tmp_path / "selected")
    stopped = offsets(audit.attacker_config(config, released_epoch=target.best_epoch), tmp_path / "stopped")
    assert max(abs(v) for v in stopped) < 0.25, stopped
    assert selected[1] > 0.3 and selected[1] > abs(stopped[1]) + 0.2, (selected, stopped)


@pytest.mark.parametrize("defense, params, stops", [
    ("dp-sgd", {"epochs": 60}, False), ("dp-sgd", {}, False),  # epochs of 4x larger batches
    ("selena", {"distill_epochs": 40}, False), ("relaxloss", {}, True)])
def test_plain_references_stop_at_the_targets_epoch_only_on_its_schedule(defense, params, stops):
    """A DP-SGD target trained 60 epochs released epoch 45: stopping 30-epoch references there failed
    the pool ("stop_epoch must be in [1, epochs=30]"), and an epoch of another schedule means nothing."""
    config = audit.resolve_config("digits", train_overrides={"epochs": 30}, defense=defense, defense_params=params)
    recipe = audit.attacker_config(config, released_epoch=45 if not stops else 12)
    assert recipe.defense == "none"
    if stops:
        assert recipe.train.stop_epoch == 13 and not recipe.train.select_best
    else:
        assert recipe.train == config.train


def reference_offsets(recipe, data, split, audited, population, folder, models: int) -> tuple[float, float]:
    """Where the target sits in its reference models' Gaussians: the mean z-score of its members under
    the IN Gaussians and of its non-members under the OUT ones (0, 0 when they imitate it well)."""
    member = split.query()[1].astype(bool)
    pool, _ = audit.reference_pool(audit.plan_reference_pool(recipe, data, split), recipe, data, models, folder,
                                   progress=False)
    ref = pool.reference(audited, population, split.population)
    g = lira_statistics(ref.phi, ref.inclusion, "fixed")
    t = ref.target_phi.astype(np.float64).mean(1)
    z = {side: (t - g[side].mu.mean(1)) / g[side].sd.mean(1) for side in ("in", "out")}
    return float(z["in"][member].mean()), float(z["out"][~member].mean())


@pytest.mark.parametrize("seed", [2, 3])
def test_reference_models_of_a_federated_target_are_federations_like_it(seed, tmp_path):
    """Trained centrally on the same rows, reference models were far more confident than FedAvg's
    global model (its members and non-members 4-6 standard deviations below their Gaussians' means
    here); each a federation with the target's clients and rounds, they imitate it."""
    from dataclasses import replace

    from mia.defenses import make_defense
    from mia.fl.config import FLConfig
    from mia.fl.simulation import simulate

    config = audit.resolve_config("digits", seed=seed, scenario="federated", fl=FLConfig(clients=10, rounds=10, record_every=10))
    data = audit.load_data(config)
    split = make_split(len(data), seed, config.split)
    model, _, _ = simulate(config.model, config.norm, data, split, config.fl, config.train, make_defense("none"),
                           seed, progress=False)
    audited, population = audit.target_signals(model, data, split, config)
    recipe = audit.attacker_config(config, released_epoch=5)
    assert recipe.scenario == "federated" and recipe.train.select_best == config.train.select_best
    federations = reference_offsets(recipe, data, split, audited, population, tmp_path / "fed", 8)
    central = replace(config, scenario="centralized", fl=None)
    centralized = reference_offsets(central, data, split, audited, population, tmp_path / "central", 8)
    assert max(abs(v) for v in federations) < 1.0, federations
    assert max(centralized) < -3.0, centralized


def test_a_federated_pool_is_keyed_by_what_shapes_the_global_model():
    from dataclasses import replace

    from mia.fl.config import FLConfig

    base = audit.resolve_config("digits", scenario="federated", fl=FLConfig(clients=10, rounds=10))
    key = audit.pool_identity
    assert key(replace(base, fl=FLConfig(clients=10, rounds=10, target_client=3, record_every=5))) == key(base)
    assert key(replace(base, fl=FLConfig(clients=10, rounds=20))) != key(base)
    assert key(replace(base, fl=FLConfig(clients=5, rounds=10))) != key(base)
    assert key(replace(base, scenario="centralized", fl=None)) != key(base)


def test_label_only_needs_follow_the_attack_parameters():
    """``boundary`` reads ``boundary-wb`` in white-box mode: the signals computed for it and ``all``'s filter
    must be that signal, not the registered default."""
    from mia.signals import Signals

    white = {"boundary": {"mode": "white-box"}}
    config = audit.resolve_config("digits")
    assert selection.label_only_for(config, ["boundary"], white).label_only == ["boundary-wb"]
    assert selection.label_only_for(config, ["boundary"]).label_only == ["boundary"]  # black-box, the default
    signals = Signals(np.zeros((2, 3)), np.zeros(2, dtype=np.int64), label_only={"boundary-wb": np.zeros(2)})
    assert selection.applicable(["boundary", "loss"], signals, params=white) == ["boundary", "loss"]
    assert selection.applicable(["boundary", "loss"], signals) == ["loss"]


def test_all_leaves_out_what_the_target_cannot_have_and_a_named_attack_is_refused():
    """Under ``all``, ``selena-adaptive`` runs on SELENA targets only and ``noise-flip`` is no error on tabular rows
    that are not 0/1 (mutants aiming selena-adaptive at every defended target, or refusing ``all`` on Texas-like
    data, survived)."""
    from mia.data import Dataset
    from mia.signals import Signals

    signals = Signals(np.zeros((2, 3)), np.zeros(2, dtype=np.int64))
    assert selection.applicable(["loss", "selena-adaptive"], signals, defense="dp-sgd") == ["loss"]
    assert selection.applicable(["loss", "selena-adaptive"], signals, defense="selena") == ["loss", "selena-adaptive"]
    counts = Dataset("counts", torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([0, 1]), 2, "tabular")
    selection.check_label_only_data("all", ["loss", "noise-flip"], counts)  # left out later, not refused
    with pytest.raises(MiaError, match="features are not all 0 or 1"):
        selection.check_label_only_data(["loss", "noise-flip"], ["loss", "noise-flip"], counts)
    binary = Dataset("bits", torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]), 2, "tabular")
    selection.check_label_only_data(["noise-flip"], ["noise-flip"], binary)


def test_an_audit_computes_the_label_only_signals_of_the_attacks_it_names(monkeypatch):
    """Training and attacking in one call, naming ``boundary`` asks for its signals (it was refused until
    ``--label-only`` repeated it), and no other label-only signal is computed (no attack will read it); a
    given ``label_only`` is kept; signals that cannot exist for the data are not asked for."""
    from mia import experiment

    class Trained(Exception):
        pass

    def stop(config, *args, **kwargs):
        raise Trained(config.label_only)

    monkeypatch.setattr(audit._fit, "fit", stop)
    monkeypatch.setattr(experiment, "train_run", stop)
    config = audit.resolve_config("digits")
    given = audit.resolve_config("digits", label_only="aug,noise-flip")
    for run in (audit.run_audit, experiment.audit_run):
        with pytest.raises(Trained) as trained:  # unset: only what the named attacks read
            run(config, attacks="loss,boundary,aug", attack_params={"boundary": {"mode": "white-box"}})
        assert trained.value.args[0] == ["boundary-wb", "aug"]
        with pytest.raises(Trained) as trained:
            run(config, attacks="loss,rmia")
        assert trained.value.args[0] == []
        with pytest.raises(Trained) as trained:  # given: kept, and the named attacks' added
            run(given, attacks="loss,boundary")
        assert trained.value.args[0] == ["aug", "noise-flip", "boundary"]
    assert selection.label_only_for(config, "all").label_only == ["aug"]  # all's cheap kinds where they apply
    assert selection.label_only_for(given, "all").label_only == ["aug", "noise-flip"]
    with pytest.raises(MiaError, match="'noise-flip' signals, which exist for binary tabular data only; digits is"):
        audit.run_audit(config, attacks="noise-flip")


def test_the_target_selects_its_epoch_on_validation_rows_never_on_the_audited_nonmembers(mlflow_store, monkeypatch):
    """Both ways in (the notebook's run_audit and the tracked training run), centralized and pruned (its dense
    original too): the target trains on the members, selects on the validation rows and is tested on the
    non-members; selecting on the non-members would tune the model on the very rows the attacks then query."""
    from mia import experiment

    class Trained(Exception):
        pass

    seen = []

    def stop(config, data, train_idx, val_idx, test_idx, *args, **kwargs):
        seen.append((config.scenario, *(np.asarray(i) for i in (train_idx, val_idx, test_idx))))
        raise Trained

    def dense(config, data, train_idx, val_idx, test_idx, *args, **kwargs):  # a pruning target's first model
        seen.append((config.scenario, *(np.asarray(i) for i in (train_idx, val_idx, test_idx))))
        if pruning:
            net = torch.nn.Linear(64, 10)
            return audit.TrainedModel(net, net, 0, [], 0.0, 0.0, 0.0)
        raise Trained

    monkeypatch.setattr(audit._fit, "fit", dense)  # both run_audit and train_run fit through audit.fit_target
    monkeypatch.setattr(audit._fit, "fit_pruned", stop)
    for scenario in ("centralized", "pruning"):
        pruning = scenario == "pruning"
        config = audit.resolve_config("digits", scenario=scenario)
        for run in (lambda: audit.run_audit(config, attacks="loss", progress=False),
                    lambda: experiment.train_run(config, progress=False)):
            with pytest.raises(Trained):
                run()
    split = make_split(1797, 0, config.split)
    assert [s[0] for s in seen] == ["centralized"] * 2 + ["centralized", "pruning"] * 2  # dense, then pruned
    for _, train_idx, val_idx, test_idx in seen:
        assert np.array_equal(train_idx, split.members)
        assert np.array_equal(val_idx, split.validation)
        assert np.array_equal(test_idx, split.nonmembers)


def test_a_checkpoint_trained_with_group_norm_loads_into_its_runs_model():
    """DP-SGD turns BatchNorm into GroupNorm (Opacus) while the run's config keeps ``norm=bn``: the network
    rebuilt after the run (for the label-only signals a later attack asks for) takes the checkpoint's norm."""
    from types import SimpleNamespace

    from mia import experiment
    from mia.models import build_model

    config = audit.resolve_config("digits", model="wrn10-1")
    data = audit.load_data(config)
    trained = build_model("wrn10-1", data.input_shape, data.num_classes, norm="gn")
    run = SimpleNamespace(config=config, run_id="0" * 32, state_dict=lambda artifact: trained.state_dict())
    rebuilt = experiment._stored_network(run, data)
    x = data.inputs(data.x[:8])
    torch.testing.assert_close(rebuilt(x), trained.eval()(x))
    wrong = build_model("mlp", data.input_shape, data.num_classes)
    run.state_dict = lambda artifact: wrong.state_dict()
    with pytest.raises(MiaError, match="does not fit model 'wrn10-1'"):
        experiment._stored_network(run, data)
