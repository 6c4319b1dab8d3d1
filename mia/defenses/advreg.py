"""Adversarial regularization (Nasr, Shokri & Houmansadr, CCS 2018, "Machine Learning with
Membership Privacy using Adversarial Regularization").

A min-max game between the classifier f and an inference model h(f(x), y)
that tells members from non-members:

    min_f max_h  L_D(f) + alpha * G(f, h),
    G = mean_{(x,y) in D} log h(f(x), y) + mean_{(x',y') in D'} log(1 - h(f(x'), y')),

where D is the training set and D' a *reference* set of non-members the
defender holds. Nasr et al.'s Algorithm 1 alternates, for the whole of
training: ``k`` steps of h (ascending G on a member batch and a reference
batch), then one step of f on a member batch, descending
``CE + alpha * mean log h(f(x), y)`` (the only part of G that depends on f
through the members). Every classifier step here is one batch of the
epoch's permutation, so f sees all of D each epoch and h is retrained
``k`` times per classifier step. (mia_prune/WeMeM stepped the classifier on
a single minibatch per epoch: REFERENCE.md section 8.)

Decisions: the reference set D' is a seeded ``reference_fraction`` of the
validation rows (non-members disjoint from the evaluation non-members), and
the best epoch is selected on the rest of them, never on rows h trained on.
There is no warm-up epoch: the game starts at step one, as in Algorithm 1
(the RelaxLoss and HAMP reimplementations train one plain epoch first). h is
Nasr et al.'s architecture: the softmax vector through 1024-512-64, the
one-hot label through 512-64, combined through 256-64-1, trained with Adam
on the binary cross-entropy. During h's steps f runs in eval mode on
unaugmented inputs (as an attacker queries it), so BatchNorm statistics never
see the reference rows.

What to expect: the game is unstable once the classifier memorizes. On the
tests' purchase-synth task (500 members, 20 classes, Adam) h gets ahead
(attack accuracy 0.65-0.78) after 6-9 epochs at every alpha from 1 to 6, and
f answers by giving up its own fit: validation accuracy falls from 0.83 to
0.1-0.3 before it recovers, and it does so with the official code's bounded
gain ``mean(h) - 0.5`` as well as with ``log h``, with k = 5 and with 90 % of
the validation rows as the reference set (measured 2026-12-07). Best-epoch
selection then releases an epoch before the collapse, so on small data AdvReg
partly acts as early stopping; compare it with ``early-stopping`` in an audit,
and read ``attack_accuracy``/``val_accuracy`` per epoch in the run.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mia.data.augment import crop_flip
from mia.data.base import Dataset
from mia.defenses.base import Defense, DefenseSpec, EpochCallback, HyperParam, ModelFactory, register
from mia.errors import Diverged, MiaError
from mia.train import TrainConfig, TrainResult, make_optimizer
from mia.train.loop import (SCHEDULES, EpochLog, autocast_on, batches_per_epoch, check_recipe, resident,
                            resident_accuracy)
from mia.train.predict import resolve_device

_REFERENCE_STREAM = 0xADE  # keeps the reference draw independent of other uses of the seed


class InferenceModel(nn.Module):
    """Nasr et al.'s h(f(x), y): a branch for the softmax vector, one for the one-hot label, then a joint head.

    Returns the membership *logit* (sigmoid of it is h), so the losses use
    the numerically stable ``logsigmoid``.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.scores = nn.Sequential(nn.Linear(num_classes, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(),
                                    nn.Linear(512, 64), nn.ReLU())
        self.labels = nn.Sequential(nn.Linear(num_classes, 512), nn.ReLU(), nn.Linear(512, 64), nn.ReLU())
        self.combine = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(),
                                     nn.Linear(64, 1))

    def forward(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.combine(torch.cat([self.scores(probs), self.labels(onehot)], dim=1)).squeeze(1)


def reference_split(val_idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(reference, selection)``: a seeded ``fraction`` of the validation rows for h, the rest for model selection."""
    val_idx = np.asarray(val_idx, dtype=np.int64)
    size = int(round(fraction * len(val_idx)))
    if size < 1:
        raise MiaError(f"advreg needs reference non-members from the validation rows, but {fraction} of "
                       f"{len(val_idx)} rows is none; use more validation rows or a larger reference_fraction")
    chosen = np.random.default_rng([seed, _REFERENCE_STREAM]).permutation(len(val_idx))
    return np.sort(val_idx[chosen[:size]]), np.sort(val_idx[chosen[size:]])


class AdvReg(Defense):
    """Whole-procedure defense: its own loop alternating ``k`` steps of h with one step of f."""

    alpha: float
    k: int
    reference_fraction: float
    attack_lr: float

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed, **params)
        self.attack_steps = 0
        self.classifier_steps = 0
        self.attack_accuracy = math.nan

    def fit(self, make_model: ModelFactory, data: Dataset, train_idx: np.ndarray, val_idx: np.ndarray,
            config: TrainConfig, on_epoch: EpochCallback | None = None,
            progress: bool = True) -> tuple[nn.Module, TrainResult]:
        """Train f against h on ``train_idx``; h's non-members and f's model selection split ``val_idx``."""
        start = time.perf_counter()
        check_recipe(config)
        reference_idx, select_idx = reference_split(val_idx, self.reference_fraction, self.seed)
        if config.select_best and len(select_idx) == 0:
            raise MiaError("advreg selects its best epoch on the validation rows it leaves out of the reference "
                           "set, and none are left; lower reference_fraction or set select_best=False")
        device = resolve_device(config.device)
        cuda = device.type == "cuda"
        x_train, y_train = resident(data, train_idx, device)
        x_ref, y_ref = resident(data, reference_idx, device)
        x_val, y_val = resident(data, select_idx, device)
        n = len(y_train)
        if n == 0:
            raise MiaError("no training rows: train_idx is empty; pass the indices of the members to train on")

        image = data.kind == "image" and x_train.dim() == 4
        augment = config.augment and data.augment and image
        memory_format = torch.channels_last if cuda and image and config.channels_last else torch.contiguous_format
        amp = autocast_on(device, config)
        model = make_model().to(device=device, memory_format=memory_format)
        attack = InferenceModel(data.num_classes).to(device)
        optimizer = make_optimizer(model, config)
        attack_optimizer = torch.optim.Adam(attack.parameters(), lr=self.attack_lr)
        schedule = SCHEDULES.get(config.schedule)
        steps = batches_per_epoch(n, config.batch_size)
        total_steps = steps * config.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s / total_steps))
        generator = torch.Generator(device=device).manual_seed(config.seed)
        self.attack_steps = self.classifier_steps = 0

        def prepare(xb: torch.Tensor, train_mode: bool) -> torch.Tensor:
            if train_mode and augment:
                xb = crop_flip(xb, generator=generator)
            return data.inputs(xb).contiguous(memory_format=memory_format)

        def onehot(y: torch.Tensor) -> torch.Tensor:
            return F.one_hot(y, data.num_classes).float()

        def attack_step(correct: torch.Tensor) -> None:
            """One step of h on a random member batch and a random reference batch (f frozen, in eval mode)."""
            members = torch.randint(n, (config.batch_size,), generator=generator, device=device)
            others = torch.randint(len(y_ref), (config.batch_size,), generator=generator, device=device)
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                probs = torch.softmax(model(prepare(torch.cat([x_train[members], x_ref[others]]), False)).float(), 1)
            labels = torch.cat([y_train[members], y_ref[others]])
            is_member = torch.cat([torch.ones(len(members), device=device), torch.zeros(len(others), device=device)])
            logits = attack(probs, onehot(labels))
            loss = F.binary_cross_entropy_with_logits(logits, is_member)  # = -G on this pair of batches
            attack_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            attack_optimizer.step()
            correct += ((logits.detach() > 0) == is_member.bool()).sum()
            self.attack_steps += 1

        log = EpochLog(model, config, "advreg", on_epoch, progress, start)
        for epoch in log.epochs:
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=generator, device=device)
            loss_sum = torch.zeros((), device=device)
            gain_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            attack_correct = torch.zeros((), device=device, dtype=torch.long)
            seen, attack_start, lr = 0, self.attack_steps, optimizer.param_groups[0]["lr"]
            for s in range(steps):
                attack.train()
                for _ in range(self.k):
                    attack_step(attack_correct)
                rows = perm[s * config.batch_size:(s + 1) * config.batch_size]
                yb = y_train[rows]
                model.train()
                attack.eval()
                attack.requires_grad_(False)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(prepare(x_train[rows], True))
                ce = F.cross_entropy(logits.float(), yb)
                gain = F.logsigmoid(attack(torch.softmax(logits.float(), 1), onehot(yb))).mean()  # log h(members)
                loss = ce + self.alpha * gain
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                attack.requires_grad_(True)
                self.classifier_steps += 1
                loss_sum += loss.detach() * len(rows)  # train_loss is the objective f minimized (protocol.md)
                gain_sum += gain.detach() * len(rows)
                correct += (logits.argmax(1) == yb).sum()
                seen += len(rows)
            train_loss = loss_sum.item() / seen
            if not math.isfinite(train_loss):
                raise Diverged(f"advreg training diverged (loss {train_loss} in epoch {epoch}); lower the learning "
                               f"rate (lr={config.lr}) or alpha ({self.alpha})")
            model.eval()
            val_acc = resident_accuracy(model, x_val, y_val, prepare, amp, config.batch_size)
            attack_seen = 2 * config.batch_size * (self.attack_steps - attack_start)
            self.attack_accuracy = attack_correct.item() / attack_seen
            metrics = {"train_loss": train_loss, "train_accuracy": correct.item() / seen, "val_accuracy": val_acc,
                       "lr": lr, "epoch_time": time.perf_counter() - t0,
                       "attack_accuracy": self.attack_accuracy, "attack_gain": gain_sum.item() / seen}
            log.end(epoch, metrics, attack=self.attack_accuracy)
        return model, log.result()

    def metrics(self) -> dict[str, float]:
        return {"advreg.attack_steps": float(self.attack_steps),
                "advreg.classifier_steps": float(self.classifier_steps),
                "advreg.attack_accuracy": float(self.attack_accuracy)}


register(DefenseSpec(
    "advreg", AdvReg,
    "adversarial regularization (Nasr et al. 2018): min-max training against an inference model that "
    "separates members from a reference set of non-members",
    params={"alpha": HyperParam(float, 3.0, "weight of the inference model's gain in the classifier's loss "
                                            "(the paper's lambda)", low=0.0, search_range=(0.5, 10.0)),
            "k": HyperParam(int, 1, "inference-model steps per classifier step", low=1,
                              search_range=(1, 5)),
            "reference_fraction": HyperParam(float, 0.5, "fraction of the validation rows held out as the "
                                                         "reference non-members", low=0.0, high=0.95,
                                                 open_low=True, search_range=(0.1, 0.9)),
            "attack_lr": HyperParam(float, 1e-3, "Adam learning rate of the inference model",
                                    low=0.0, open_low=True, log=True, search_range=(1e-4, 1e-2))}))
