"""The audit protocol on real trained models, without MLflow (the core alone)."""

from __future__ import annotations

import numpy as np
import pytest

from mia import audit
from mia.data import make_split

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
    assert audit.resolve_attacks("all")[:2] == ["loss", "confidence"]
    assert audit.resolve_attacks("nn, loss,nn") == ["nn", "loss"]
