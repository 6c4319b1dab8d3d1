"""The training recipe, one dataclass shared by targets, shadows and reference models."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TrainConfig:
    """How to fit a model. Shadow models copy the target's config (same recipe)."""

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum (SGD only)
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" | "step" | "constant"
    augment: bool = True  # crop+flip on the device; only used where the dataset allows it
    seed: int = 0
    device: str = "auto"  # "auto" picks cuda when present
    amp: bool = True  # bf16 autocast in training on CUDA (on the CPU only with cpu_bf16)
    cpu_bf16: bool = False  # bf16 autocast in training on the CPU too: needs native bf16 (AVX512-BF16, AMX)
    channels_last: bool = True  # on CUDA for image models
    select_best: bool = True  # keep the epoch with the best validation accuracy
    stop_epoch: int | None = None  # stop after this many epochs of the ``epochs``-long schedule (None: all)
    compile: bool = False  # on CUDA, torch.compile with CUDA graphs (loop.compile_for_cuda; pays off for long runs)

    @property
    def epochs_run(self) -> int:
        """How many epochs a fit runs: ``stop_epoch`` when set, else ``epochs``.

        The learning-rate schedule still spans ``epochs``: reference models of a
        target whose best validation epoch was ``e`` run the target's schedule
        and stop where it did (``stop_epoch = e + 1``).
        """
        return self.epochs if self.stop_epoch is None else min(self.stop_epoch, self.epochs)

    def to_dict(self) -> dict:
        return asdict(self)
