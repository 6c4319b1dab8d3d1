"""Black-box membership inference attacks on stored signals.

``run_attack(name, target, shadows)`` fits attack ``name`` on shadow models'
signals and scores the target's; :data:`ATTACKS` lists them in the order
loss, confidence, correctness, entropy, mentr, hconf, nn, nn-top3, nn-cls,
nn-nasr, samia, then the reference-model attacks lira-online, lira-offline, rmia and
global-threshold (``run_attack(..., reference=...)``), then the label-only
attacks aug, boundary and noise-flip (which read ``Signals.label_only``), then
selena-adaptive (``run_attack(..., split_ai=...)``).
"""

from mia.attacks.base import (ATTACKS, Attack, AttackOutput, AttackSpec, ReferenceSignals, ShadowSignals, pool,
                              resolve_params, run_attack)
from mia.attacks import threshold, learned, samia, reference  # noqa: F401  (registers the attacks)
from mia.attacks import label_only  # noqa: F401  (registers aug, boundary, noise-flip)
from mia.attacks import adaptive  # noqa: F401  (registers selena-adaptive)
from mia.attacks.adaptive import SplitAISignals
from mia.attacks.threshold import best_threshold

__all__ = ["ATTACKS", "Attack", "AttackOutput", "AttackSpec", "ReferenceSignals", "ShadowSignals",
           "SplitAISignals", "best_threshold", "pool", "resolve_params", "run_attack"]
