"""The audit (centralized, federated, pruning), without any tracking: train a target, train shadows, attack.

Everything here is plain Python on torch/numpy, so the same audit runs from a
notebook or on a GPU image that lacks MLflow. :mod:`mia.experiment` wraps these
steps with MLflow runs; the CLI wraps that.

The protocol (REFERENCE.md section 1):

* the target trains on ``split.members``, picks its best epoch on
  ``split.validation`` and is queried on the balanced set ``split.query()``;
* reference (shadow) models imitate the target's recipe on random subsets
  of the attacker's data, as large as the target's training set
  (:mod:`mia.pool`); threshold and learned attacks fit
  on their outputs on the population, LiRA and RMIA compare the target with
  them on the audited samples;
* attacks see the target's signals and the shadows' signals with their
  membership, never the target's membership, which only the metrics read.

The steps live in five modules, read in this order, and every public name is
reachable from here (``from mia import audit; audit.fit(...)``):

* ``_config``: what a target is (:class:`TargetConfig`), checked before anything trains;
* ``_fit``: training a model in each scenario, through its defense;
* ``_reference``: the recipe the reference models copy and the key of their cached pool;
* ``_attack``: the target's signals, each attack on them, scored;
* ``_run``: :func:`run_audit`, the steps in order, and the :class:`Audit` it returns.
"""

from mia.audit._attack import (AttackResult, attack_target, leakage_summary, query_signals, run_attacks,
                               run_fl_attacks, target_signals)
from mia.audit._config import SCENARIOS, TargetConfig, check_config, dense_config, dense_title, resolve_config
from mia.audit._fit import (TrainedModel, check_import, finetune_metrics, fit, fit_federated, fit_federations,
                            fit_many, fit_pruned, fit_target, load_data, target_split)
from mia.audit._reference import (POOL_FORMAT, attacker_config, needs_pool, plan_reference_pool, pool_identity,
                                  reference_pool, split_ai_reference)
from mia.audit._run import Audit, run_audit

__all__ = [
    "SCENARIOS", "TargetConfig", "check_config", "dense_config", "dense_title", "resolve_config",
    "TrainedModel", "check_import", "finetune_metrics", "fit", "fit_federated", "fit_federations", "fit_many",
    "fit_pruned", "fit_target", "load_data", "target_split",
    "POOL_FORMAT", "attacker_config", "needs_pool", "plan_reference_pool", "pool_identity", "reference_pool",
    "split_ai_reference",
    "AttackResult", "attack_target", "leakage_summary", "query_signals", "run_attacks", "run_fl_attacks",
    "target_signals",
    "Audit", "run_audit",
]
