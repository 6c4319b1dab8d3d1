"""Training: one fast loop (:func:`train`), its recipe (:class:`TrainConfig`) and batched inference."""

from mia.train.config import TrainConfig
from mia.train.loop import TrainHooks, TrainResult, make_optimizer, seed_everything, train
from mia.train.predict import predict_logits, resolve_device
from mia.train.recipes import default_config

__all__ = ["TrainConfig", "TrainHooks", "TrainResult", "default_config", "make_optimizer", "predict_logits", "resolve_device",
           "seed_everything", "train"]
