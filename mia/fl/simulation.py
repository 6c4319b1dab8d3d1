"""FedAvg in one process, with the honest-but-curious server's view recorded for FedMIA.

The federated members (``split.members``) are partitioned among ``clients``
(:mod:`mia.fl.partition`). Each round samples ``fraction`` of the clients
(seeded by the round), trains them from the global weights
(:mod:`mia.fl.clients`), passes their updates through the defense's
``upload`` hook (what the server sees), and sets ``w <- w + server_lr *
sum_k weights_k upload_k`` with weights proportional to client data size.

The server's view (:mod:`mia.fl.record`) is recorded every ``record_every``
rounds and in the last one, on a fixed query set: the target client's
members (at most ``max_query``) and as many evaluation non-members, the same
samples for every client and every round.

Resumable: every recorded round ends with a checkpoint (:class:`FLState`:
global weights, rounds done, signals so far, the defense's state); all
randomness of round ``r`` derives from ``(seed, r, client)``, so a run
resumed from a checkpoint ends with the same model as one never interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mia.data.base import Dataset
from mia.data.splits import Split
from mia.defenses.base import Defense
from mia.errors import Diverged, MiaError
from mia.fl.attacks import FLSignals
from mia.fl.config import FLConfig
from mia.fl.clients import CPU_STACK_PARAMS, LoopClients, Params, StackedClients, flatten, unflatten
from mia.fl.partition import partition
from mia.fl.record import record_round
from mia.models import batchnorm_fix, build_model
from mia.train import TrainConfig, TrainHooks, resolve_device
from mia.train.predict import accuracy
from mia.train.many import module_stackable, vmap_runs


@dataclass
class Federation:
    """The partition and the server's fixed query set of one run."""

    clients: list[np.ndarray]
    query: np.ndarray
    is_member: np.ndarray  # of the target client

    @classmethod
    def of(cls, data: Dataset, split: Split, config: FLConfig, seed: int) -> "Federation":
        labels = data.y[torch.as_tensor(split.members, device=data.y.device)].cpu().numpy()
        clients = partition(split.members, labels, config.clients, config.partition, config.alpha, seed)
        rng = np.random.default_rng([seed, 4])
        target = clients[config.target_client]
        # as many members as non-members, drawn at random (not the k lowest rows of a larger draw: rows stored
        # class by class gave members of the first classes only); the same draws as before wherever k was not cut
        k = min(len(target), config.max_query, len(split.nonmembers))
        members = np.sort(rng.choice(target, k, replace=False))
        nonmembers = np.sort(rng.choice(split.nonmembers, k, replace=False))
        return cls(clients, np.concatenate([members, nonmembers]), np.arange(2 * k) < k)


@dataclass
class FLState:
    """A checkpoint: rounds done, global weights and buffers, the signals so far, history, defense state.

    ``saves`` counts the checkpoints written: they alternate between two files, ``state-0.pt`` and
    ``state-1.pt``, so that a run killed while one is copied into the artifact store still has the
    other, one recorded round older, to resume from (one file replaced in place was lost with it).
    """

    round: int
    params: Params
    buffers: Params
    signals: FLSignals
    history: list[dict] = field(default_factory=list)
    defense: dict = field(default_factory=dict)
    saves: int = 0

    def save(self, folder: str | Path) -> None:
        """``state-<saves % 2>.pt``, everything a resume needs in one file (the server's view included: two
        files copied one after the other could be caught half-way, a new state beside an old view), and
        ``signals.npz``, the view the attacks read."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.saves += 1
        signals = {k: torch.from_numpy(np.ascontiguousarray(getattr(self.signals, k)))
                   for k in ("rounds", "loss", "cos", "grad_diff", "grad_norm")}
        torch.save({"round": self.round, "params": {k: v.cpu() for k, v in self.params.items()},
                    "buffers": {k: v.cpu() for k, v in self.buffers.items()}, "history": self.history,
                    "defense": self.defense, "signals": signals, "saves": self.saves},
                   folder / f"state-{self.saves % 2}.pt")
        self.signals.save(folder / "signals.npz")

    @classmethod
    def load(cls, folder: str | Path) -> "FLState":
        """The latest checkpoint in ``folder`` that reads whole (``state.pt``: one from before the two files)."""
        folder = Path(folder)
        paths = [folder / name for name in ("state-0.pt", "state-1.pt", "state.pt") if (folder / name).is_file()]
        if not paths:
            raise MiaError(f"no federated checkpoint in {folder}: the run recorded no round yet; start it again")
        states, errors = [], []
        for path in paths:
            try:
                states.append(cls._read(path))
            except Exception as e:  # a truncated or foreign file
                errors.append(type(e).__name__)
        if not states:
            raise MiaError(f"federated checkpoint in {folder} cannot be read ({', '.join(errors)}); start the run "
                           "again")
        return max(states, key=lambda state: (state.round, state.saves))

    @classmethod
    def _read(cls, path: Path) -> "FLState":
        blob = torch.load(path, map_location="cpu", weights_only=True)
        signals = (FLSignals(**{k: v.numpy() for k, v in blob["signals"].items()}) if "signals" in blob
                   else FLSignals.load(path.parent / "signals.npz"))  # a checkpoint from before the view moved in
        return cls(int(blob["round"]), blob["params"], blob["buffers"], signals, list(blob["history"]),
                   dict(blob["defense"]), int(blob.get("saves", 0)))


RoundCallback = Callable[[int, dict], None]
RecordCallback = Callable[[FLState], None]


def _uses_hooks(defense: Defense) -> bool:
    """Whether local training must run through the loop's hooks (the stacked path has none)."""
    kind = type(defense)
    return (kind.batch is not TrainHooks.batch or kind.loss is not TrainHooks.loss
            or kind.client_hooks is not Defense.client_hooks)


def _seed(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(2**31 - 1))


def simulate(model_name: str, norm: str, data: Dataset, split: Split, config: FLConfig, train: TrainConfig,
             defense: Defense, seed: int, state: FLState | None = None, on_round: RoundCallback | None = None,
             on_record: RecordCallback | None = None, progress: bool = True,
             stack: bool | None = None, record: bool = True) -> tuple[torch.nn.Module, FLState, Federation]:
    """Run (or, from ``state``, resume) FedAvg; returns the final global model, the last state, the federation.

    Local SGD takes ``config``'s lr, momentum and batch size and ``train``'s
    weight decay, augmentation and device. ``stack`` forces the local-training
    path (None: the rule of :mod:`mia.fl.clients`). ``record=False`` records
    no server view (a reference federation, :func:`mia.audit.fit_many`).
    """
    device = resolve_device(train.device)
    fed = Federation.of(data, split, config, seed)
    torch.manual_seed(seed)
    model = build_model(model_name, data.input_shape, data.num_classes, norm=norm).to(device)
    local = replace(train, lr=config.lr, momentum=config.momentum, batch_size=config.batch_size, nesterov=False,
                    device=str(device), stop_epoch=None)  # local epochs are the federation's, on both paths
    if type(defense).upload is not Defense.upload and any(b.is_floating_point() for b in model.buffers()):
        raise MiaError("this defense protects the uploaded weights, but a BatchNorm model also uploads its "
                       f"running statistics, which it would not cover; {batchnorm_fix(model_name, norm)}")
    can_stack = module_stackable(model) and not _uses_hooks(defense) and vmap_runs(model, data.input_shape)
    if stack and not can_stack:
        raise MiaError(f"model {model_name!r} with defense hooks or buffers cannot train stacked")
    if stack is None:
        stacked_params = sum(p.numel() for p in model.parameters()) * len(config.sampled(1, seed))
        stack = device.type == "cuda" or stacked_params <= CPU_STACK_PARAMS
    use_stack = can_stack and stack
    defense.bind(data.num_classes)
    defense.clients(config.clients)
    defense.plan(config.rounds, len(config.sampled(1, seed)) / config.clients)
    trainer = StackedClients(model, data, local) if use_stack else LoopClients(model, data, local, defense)
    recorded = config.recorded_rounds()
    if state is None:
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        nan = np.full((len(recorded), config.clients, len(fed.query)), np.nan, dtype=np.float32)
        signals = FLSignals(rounds=recorded, loss=nan.copy(), cos=nan.copy(), grad_diff=nan.copy(),
                            grad_norm=np.zeros((len(recorded), len(fed.query)), dtype=np.float32))
        state = FLState(0, params, buffers, signals)
    else:
        if state.signals.loss.shape != (len(recorded), config.clients, len(fed.query)):
            raise MiaError("the checkpoint does not match this run's configuration (rounds, clients or query "
                           "set); resume with the run's own options")
        state = replace(state, params={k: v.to(device) for k, v in state.params.items()},
                        buffers={k: v.to(device) for k, v in state.buffers.items()})
        defense.load_state_dict(state.defense)
    sizes = np.asarray([len(c) for c in fed.clients], dtype=np.float64)
    xq = data.inputs(data.x[torch.as_tensor(fed.query, device=data.x.device)].to(device))
    yq = data.y[torch.as_tensor(fed.query, device=data.y.device)].to(device)
    from tqdm.auto import tqdm

    for r in tqdm(range(state.round + 1, config.rounds + 1), desc="rounds", disable=not progress, leave=False,
                  initial=state.round, total=config.rounds):
        start = time.perf_counter()
        clients = config.sampled(r, seed)
        seeds = [_seed(seed, 3, r, int(c)) for c in clients]
        global_loss = GlobalLoss(model, state, data)
        rows = [defense.local_rows(int(c), fed.clients[c], r, global_loss) for c in clients]
        try:
            if use_stack:
                result = trainer.run(state.params, rows, seeds, config.local_epochs)
            else:
                result = trainer.run(state.params, rows, seeds, config.local_epochs, state.buffers,
                                     hooks=[defense.client_hooks(int(c)) for c in clients])
        except Diverged as exc:
            raise _diverged(exc, defense, r) from None
        weights = torch.as_tensor(sizes[clients] / sizes[clients].sum(), dtype=torch.float32, device=device)
        _, layers = flatten(state.params)
        uploads = defense.upload(result.updates, clients, weights, r, layers)
        if record and r in recorded:
            i = int(np.flatnonzero(recorded == r)[0])
            view = record_round(model, state.params, state.buffers, uploads, xq, yq, result.buffers or None)
            for key in ("loss", "cos", "grad_diff"):
                getattr(state.signals, key)[i, clients] = view[key]
            state.signals.grad_norm[i] = view["grad_norm"]
        glob, _ = flatten(state.params)
        new = unflatten(glob + config.server_lr * (weights @ uploads), state.params)
        buffers = state.buffers
        if result.buffers:  # BatchNorm statistics: the size-weighted mean, like the weights
            buffers = {n: _weighted(b, [cb[n] for cb in result.buffers], weights) for n, b in buffers.items()}
        state = replace(state, round=r, params=new, buffers=buffers)
        defense.after_round(r, GlobalLoss(model, state, data))
        load_global(model, state)
        metrics = {"test_accuracy": accuracy(model, data, split.nonmembers, str(device)),
                   "train_accuracy": float(np.mean(result.train_accuracy)),
                   "round_time": time.perf_counter() - start}
        state.history.append({"round": r, **metrics})
        if on_round is not None:
            on_round(r, metrics)
        if r in recorded:
            state.defense = defense.state_dict()
            if on_record is not None:
                on_record(state)
    load_global(model, state)
    return model, state, fed


def _diverged(exc: Diverged, defense: Defense, round: int) -> Diverged:
    """The clients' divergence, blamed on the defense where the model they started from is its work.

    A defense that perturbs uploads (client-dp's noise, instahide) can wreck
    the global model the next round's clients start from, and lowering the
    local learning rate, what a plain divergence calls for, does not help.
    """
    if round == 1 or type(defense).upload is Defense.upload:
        return exc
    what = str(exc).split(";")[0]  # not its hint: the learning rate is not the cause here
    params = ", ".join(f"{k}={v}" for k, v in defense.params.items())
    return Diverged(f"round {round}: {what}, starting from the aggregate of round {round - 1}'s uploads as "
                    f"defense {defense.name} perturbed them ({params}); weaken the defense (client-dp: a larger "
                    "epsilon, a smaller noise_multiplier or max_update_norm, whose product is the noise per weight)")


class GlobalLoss:
    """Per-row cross-entropy of a state's global model (what FL defenses read to judge utility)."""

    def __init__(self, model: torch.nn.Module, state: FLState, data: Dataset):
        self.model, self.state, self.data = model, state, data

    @torch.no_grad()
    def __call__(self, rows: np.ndarray) -> np.ndarray:
        from torch.func import functional_call

        device = next(iter(self.state.params.values())).device
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.data.x.device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = []
            for chunk in idx.split(1024):
                x = self.data.inputs(self.data.x[chunk].to(device))
                logits = functional_call(self.model, {**self.state.params, **self.state.buffers}, (x,))
                out.append(torch.nn.functional.cross_entropy(logits.float(), self.data.y[chunk].to(device),
                                                             reduction="none"))
        finally:
            self.model.train(was_training)
        return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)


def _weighted(current: torch.Tensor, values: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    if not current.is_floating_point():  # e.g. num_batches_tracked: the largest count
        return torch.stack(values).max(0).values
    return sum(w * v for w, v in zip(weights, values)).to(current.dtype)


def load_global(model: torch.nn.Module, state: FLState) -> torch.nn.Module:
    with torch.no_grad():
        model.load_state_dict({**state.params, **state.buffers})
    model.eval()
    return model
