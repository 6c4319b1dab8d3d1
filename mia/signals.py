"""Per-sample signals of a model on a query set, computed once and stored.

Attacks are functions of stored signals: running ten attacks does not query
the model ten times, and re-running an attack does not retrain anything. The
stored form is the logits (everything score-based derives from them) plus, for
SAMIA, the output sensitivity to input noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Signals:
    """One model's outputs on one query set.

    ``logits``: float32 ``N x C``; ``labels``: int64 ``N``; ``sensitivity``:
    float32 ``N x C`` or None (only SAMIA needs it).
    """

    logits: np.ndarray
    labels: np.ndarray
    sensitivity: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)
