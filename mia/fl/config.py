"""The federation's settings: one dataclass, checked on construction (one-line errors)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mia.errors import MiaError
from mia.fl.partition import PARTITIONS


UNUSED_TRAIN = ("epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "schedule", "select_best",
                "stop_epoch")
"""Recipe (:class:`mia.train.TrainConfig`) fields a federation does not train with: its clients run
:class:`FLConfig`'s constant-rate local SGD (``local_epochs``, ``lr``, ``batch_size``) for its rounds."""


@dataclass
class FLConfig:
    """The federation: clients, rounds, local training, sampling, what the server records."""

    clients: int = 10
    rounds: int = 20
    local_epochs: int = 1
    fraction: float = 1.0  # share of clients sampled per round
    partition: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration for partition="dirichlet"
    server_lr: float = 1.0
    lr: float = 0.1  # local SGD
    momentum: float = 0.0
    batch_size: int = 32
    target_client: int = 0
    record_every: int = 1
    max_query: int = 500  # target members in the query set (and as many non-members)

    def __post_init__(self):
        checks = [(self.clients >= 1, f"--clients must be >= 1, got {self.clients}"),
                  (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
                  (self.local_epochs >= 1, f"--local-epochs must be >= 1, got {self.local_epochs}"),
                  (0 < self.fraction <= 1, f"--client-fraction must be in (0, 1], got {self.fraction}"),
                  (self.partition in PARTITIONS, f"unknown partition {self.partition!r}; use {' or '.join(PARTITIONS)}"),
                  (self.alpha > 0, f"--alpha must be > 0, got {self.alpha}"),
                  (self.server_lr > 0 and self.lr > 0, "learning rates must be > 0"),
                  (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
                  (0 <= self.target_client < self.clients,
                   f"--target-client must be in [0, {self.clients - 1}], got {self.target_client}"),
                  (self.record_every >= 1, f"--record-every must be >= 1, got {self.record_every}"),
                  (self.max_query >= 1, f"max_query must be >= 1, got {self.max_query}")]
        for ok, message in checks:
            if not ok:
                raise MiaError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    def recorded_rounds(self) -> np.ndarray:
        return np.asarray([r for r in range(1, self.rounds + 1) if r % self.record_every == 0 or r == self.rounds])

    def sampled(self, round: int, seed: int) -> np.ndarray:
        """The clients of round ``round``: a seeded draw of ``max(1, round(fraction * clients))``."""
        m = max(1, int(np.floor(self.fraction * self.clients + 0.5)))
        return np.sort(np.random.default_rng([seed, 2, round]).choice(self.clients, m, replace=False))
