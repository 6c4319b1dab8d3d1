"""Reference-model pools: layout, caching, growth, mem-scores."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mia import audit
from mia.data import make_split
from mia.errors import MiaError
from mia.fl.config import FLConfig
from mia.pool import PoolGrowth, model_file, plan_pool, pool_size


@pytest.fixture(scope="module")
def task():
    config = audit.resolve_config("digits", seed=0, train_overrides={"epochs": 4})
    data = audit.load_data(config)
    return config, data, make_split(len(data), 0, config.split)


def test_plan_layout_and_inclusion(task):
    config, data, split = task
    online = audit.plan_reference_pool(config, data, split, "online")
    offline = audit.plan_reference_pool(config, data, split, "offline")
    assert online.key != offline.key
    audited, _ = split.query()
    assert np.array_equal(online.audited, audited)
    # the pool's population and validation partition the split's population
    assert set(online.population) | set(online.validation) == set(split.population)
    assert not set(online.population) & set(online.validation)
    # the validation slice is drawn at random, not the population's lowest (class-ordered datasets) rows
    assert not np.array_equal(online.validation, split.population[:len(online.validation)])
    # a model trains on as many rows as the target, but at most half its candidates (the default split's
    # offline pool has fewer than twice the members: its models train on half the population)
    assert len(offline.candidates) < 2 * len(split.members)
    assert offline.train_size == len(offline.candidates) // 2 == len(offline.population) // 2
    n = len(online.audited)
    for m in range(3):
        inc_on, inc_off = online.inclusion(m), offline.inclusion(m)
        assert inc_on.sum() == online.train_size == len(split.members)  # the target's training-set size
        assert not inc_off[:n].any() and inc_off[n:].sum() == offline.train_size < len(split.members)
    # a model's draw depends only on its index: growing a pool keeps the first models
    assert np.array_equal(online.inclusion(1), audit.plan_reference_pool(config, data, split).inclusion(1))
    # every audited sample is IN for some and OUT for other models of an online pool
    inc = np.stack([online.inclusion(m) for m in range(32)])[:, :n]
    share = len(split.members) / len(online.candidates)
    assert abs(inc.mean() - share) < 0.05 and inc.any(0).mean() > 0.99 and (~inc).any(0).mean() > 0.99


def test_key_depends_on_recipe_not_seed(task):
    config, data, split = task
    key = audit.plan_reference_pool(config, data, split).key
    other_seed = audit.resolve_config("digits", seed=5, train_overrides={"epochs": 4})
    assert audit.plan_reference_pool(other_seed, data, split).key == key
    longer = audit.resolve_config("digits", seed=0, train_overrides={"epochs": 5})
    assert audit.plan_reference_pool(longer, data, split).key != key


def test_settings_that_change_no_model_keep_the_key(task):
    """--norm on a model without normalization layers, channels_last on the CPU: the same models, one pool."""
    config, data, split = task
    key = audit.plan_reference_pool(config, data, split).key
    same = replace(config, norm="gn", train=replace(config.train, channels_last=False))
    assert config.model == "mlp" and audit.plan_reference_pool(same, data, split).key == key
    wrn = replace(config, model="wrn10-1")
    assert audit.plan_reference_pool(replace(wrn, norm="gn"), data, split).key != \
        audit.plan_reference_pool(wrn, data, split).key


def test_training_options_that_change_no_model_keep_the_key(task):
    """--augment on data that is never cropped or flipped (digits), amp or cpu_bf16 alone on the CPU, an Adam
    recipe's momentum: the same models, so the same pool (each changed the key, and an audit retrained it).
    What does change a model keeps changing the key."""
    config, data, split = task

    def key(**train):
        return audit.plan_reference_pool(replace(config, train=replace(config.train, **train)), data, split).key

    assert not data.augment and config.train.optimizer == "adam" and config.train.device in ("auto", "cpu")
    default = key()
    assert key(augment=True) == key(amp=False) == key(amp=False, cpu_bf16=True) == default
    assert key(momentum=0.5) == default
    assert key(cpu_bf16=True) != default  # with amp (the default): bf16 training on the CPU, other models
    assert key(optimizer="sgd", momentum=0.5) != key(optimizer="sgd", momentum=0.9)
    assert key(device="cuda", cpu_bf16=True) == key(device="cuda") != key(device="cuda", amp=False)
    # a federation's clients train by its local SGD, not the recipe's epochs, optimizer or schedule
    federated = replace(config, scenario="federated", fl=FLConfig(clients=4, rounds=2))

    def fl_key(fl: FLConfig = federated.fl, **train):
        return audit.plan_reference_pool(replace(federated, fl=fl, train=replace(config.train, **train)),
                                         data, split).key

    assert fl_key(epochs=7, lr=0.5, optimizer="sgd", schedule="cosine", select_best=False) == fl_key() != default
    assert fl_key(weight_decay=0.1) != fl_key() != fl_key(FLConfig(clients=4, rounds=2, lr=0.5))


def test_pool_is_trained_once_and_grown_incrementally(task, tmp_path):
    config, data, split = task
    plan = audit.plan_reference_pool(config, data, split)
    pool, growth = audit.reference_pool(plan, config, data, 2, tmp_path, progress=False)
    assert len(growth.new) == 2 and growth.relabelled == [] and pool_size(tmp_path) == 2
    stamp = model_file(tmp_path, 0).stat().st_mtime_ns
    again, growth = audit.reference_pool(plan, config, data, 2, tmp_path, progress=False)
    assert growth == PoolGrowth([], []) and model_file(tmp_path, 0).stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.phi, pool.phi)
    grown, growth = audit.reference_pool(plan, config, data, 3, tmp_path, progress=False)
    assert [p.name for p in growth.new] == [model_file(tmp_path, 2).name]
    np.testing.assert_array_equal(grown.phi[:2], pool.phi)
    smaller, growth = audit.reference_pool(plan, config, data, 1, tmp_path, progress=False)
    assert growth == PoolGrowth([], []) and smaller.num_models == 1

    # stored compactly, and shaped as the plan says
    n, z = len(plan.audited), len(plan.population)
    assert grown.phi.dtype == np.float16 and grown.population_logits.dtype == np.float16
    assert grown.phi.shape == (3, n + z, 1) and grown.sensitivity.shape == (3, z, 10)
    shadows = grown.shadows()
    assert len(shadows) == 3 and len(shadows[0].signals) == z
    assert 0.1 < shadows[0].is_member.mean() < 0.6
    # shadows are views of the stored float16 arrays, not copies held through the attack stage (3.6 GB of
    # float32 at 64 Purchase100 models); the stacked set attacks learn from is float32
    from mia.attacks import pool

    assert all(np.shares_memory(s.signals.logits, grown.population_logits) and
               np.shares_memory(s.signals.sensitivity, grown.sensitivity) for s in shadows)
    stacked, member = pool(shadows)
    assert stacked.logits.dtype == stacked.sensitivity.dtype == np.float32 and len(member) == 3 * z
    np.testing.assert_array_equal(stacked.logits[:z], grown.population_logits[0])


def test_label_only_signals_asked_later_are_added_to_the_first_models(task, tmp_path):
    """Label-only kinds do not tell pools apart: a pool grown without them serves a later audit that asks
    for them, its first LABEL_ONLY_MODELS models trained again (the same models: their own seeds and rows)
    and the kinds added to their files, as if asked from the start; the other models stay as they are."""
    from mia.pool import LABEL_ONLY_MODELS

    config, data, split = task
    plain, asked = replace(config, label_only=[]), replace(config, label_only=["aug", "noise-flip"])
    plan = audit.plan_reference_pool(plain, data, split)
    assert audit.plan_reference_pool(asked, data, split).key == plan.key
    pool, _ = audit.reference_pool(plan, plain, data, 3, tmp_path / "later", progress=False)
    assert LABEL_ONLY_MODELS == 2 and pool.label_only == [{}, {}, {}]
    stamp = model_file(tmp_path / "later", 2).stat().st_mtime_ns
    later, growth = audit.reference_pool(plan, asked, data, 3, tmp_path / "later", progress=False)
    assert growth.new == [] and [p.name for p in growth.relabelled] == [model_file(tmp_path, m).name for m in (0, 1)]
    assert model_file(tmp_path / "later", 2).stat().st_mtime_ns == stamp
    assert [set(kinds) for kinds in later.label_only] == [{"aug"}, {"aug"}, set()]  # noise-flip: not for images
    np.testing.assert_array_equal(later.phi, pool.phi)
    assert audit.reference_pool(plan, asked, data, 3, tmp_path / "later", progress=False)[1] == PoolGrowth([], [])

    first, _ = audit.reference_pool(plan, asked, data, 3, tmp_path / "first", progress=False)
    assert [set(kinds) for kinds in first.label_only] == [{"aug"}, {"aug"}, set()]  # asked from the start: the same
    for m in (0, 1):
        np.testing.assert_array_equal(later.label_only[m]["aug"], first.label_only[m]["aug"])


def test_a_smaller_pool_asked_with_label_only_kinds_retrains_only_the_models_it_reads(task, tmp_path):
    """An audit of 1 reference model on a stored pool of 2 adds the asked kinds to model 0 alone; model 1, which it
    does not read, is not trained again (a mutant relabelling every stored model up to LABEL_ONLY_MODELS survived)."""
    config, data, split = task
    plain, asked = replace(config, label_only=[]), replace(config, label_only=["aug"])
    plan = audit.plan_reference_pool(plain, data, split)
    audit.reference_pool(plan, plain, data, 2, tmp_path, progress=False)
    stamp = model_file(tmp_path, 1).stat().st_mtime_ns
    one, growth = audit.reference_pool(plan, asked, data, 1, tmp_path, progress=False)
    assert growth.new == [] and [p.name for p in growth.relabelled] == [model_file(tmp_path, 0).name]
    assert model_file(tmp_path, 1).stat().st_mtime_ns == stamp and [set(k) for k in one.label_only] == [{"aug"}]


def test_model_files_of_another_plan_are_refused(task, tmp_path):
    """Files over other samples than the plan's are the one-line "does not match its plan" error."""
    from mia.pool import load_pool

    config, data, split = task
    plan = audit.plan_reference_pool(config, data, split, "online")
    k, z = len(plan.samples) - 1, len(plan.population)
    np.savez(model_file(tmp_path, 0), inclusion=np.zeros(k, bool), phi=np.zeros((k, 1), np.float16),
             sensitivity=np.zeros((z, 10), np.float16), correct=np.zeros(k, bool),
             population_logits=np.zeros((z, 10), np.float16))
    with pytest.raises(MiaError, match="does not match its plan"):
        load_pool(plan, tmp_path, 1, data)


def test_key_depends_on_the_data_contents_not_only_its_name(task):
    """Two folders read by one loader (imagefolder, a local Purchase100) share a name and maybe a size."""
    from dataclasses import replace

    config, data, split = task
    key = audit.plan_reference_pool(config, data, split).key
    assert audit.plan_reference_pool(config, replace(data, x=data.x.clone()), split).key == key
    other = data.x.clone()
    other[0] = 16 - other[0]
    assert audit.plan_reference_pool(config, replace(data, x=other), split).key != key


def test_a_truncated_model_file_is_retrained_with_those_after_it(task, tmp_path):
    config, data, split = task
    plan = audit.plan_reference_pool(config, data, split)
    pool, _ = audit.reference_pool(plan, config, data, 3, tmp_path, progress=False)
    damaged = model_file(tmp_path, 1)
    damaged.write_bytes(damaged.read_bytes()[:100])  # a copy killed midway
    with pytest.warns(UserWarning, match="model 1 .* could not be read"):
        again, growth = audit.reference_pool(plan, config, data, 3, tmp_path, progress=False)
    assert [p.name for p in growth.new] == [model_file(tmp_path, m).name for m in (1, 2)]
    np.testing.assert_array_equal(again.phi, pool.phi)  # the same seeds: the same models
    with np.load(model_file(tmp_path, 2)) as f:  # a file of another layout (an earlier one held all logits)
        np.savez(model_file(tmp_path, 2), **{k: f[k] for k in f.files if k != "correct"})
    with pytest.warns(UserWarning, match="model 2 .* could not be read"):
        again, growth = audit.reference_pool(plan, config, data, 3, tmp_path, progress=False)
    assert [p.name for p in growth.new] == [model_file(tmp_path, 2).name]
    np.testing.assert_array_equal(again.correct, pool.correct)


def test_folder_of_another_pool_is_refused(task, tmp_path):
    config, data, split = task
    audit.reference_pool(audit.plan_reference_pool(config, data, split, "offline"), config, data, 1,
                         tmp_path, progress=False)
    with pytest.raises(MiaError, match="holds pool"):
        audit.reference_pool(audit.plan_reference_pool(config, data, split, "online"), config, data, 1,
                             tmp_path, progress=False)


def test_mem_scores(task, tmp_path):
    config, data, split = task
    plan = audit.plan_reference_pool(config, data, split, "offline")
    pool, _ = audit.reference_pool(plan, config, data, 4, tmp_path, progress=False)
    mem = pool.mem_scores()
    n = len(plan.audited)
    assert mem.shape == (n + len(plan.population),)
    assert np.all(mem[:n] == 0)  # no model of an offline pool ever trains on an audited sample
    assert np.all((mem >= -1) & (mem <= 1))


def test_mem_scores_of_training_rows_come_from_an_online_pool(task, tmp_path):
    config, data, split = task
    online = audit.plan_reference_pool(config, data, split, "online")
    pool, _ = audit.reference_pool(online, config, data, 4, tmp_path / "online", progress=False)
    rows = split.members[::-1]  # any order, aligned with the rows asked
    scores = pool.mem_scores_of(rows)
    position = {int(i): k for k, i in enumerate(online.samples)}
    np.testing.assert_array_equal(scores, pool.mem_scores()[[position[int(i)] for i in rows]])
    inclusion = pool.inclusion[:, [position[int(i)] for i in rows]]
    evidence = inclusion.any(0) & (~inclusion).any(0)
    assert evidence.mean() > 0.6  # most members are IN for some of the 4 models and OUT for others
    assert np.all(scores[~evidence] == 0) and scores[evidence].mean() > 0  # right more often on rows seen
    offline = audit.plan_reference_pool(config, data, split, "offline")
    pool, _ = audit.reference_pool(offline, config, data, 2, tmp_path / "offline", progress=False)
    with pytest.raises(MiaError, match="not samples of reference pool"):
        pool.mem_scores_of(split.validation)  # never a pool sample


def test_bad_pool_requests(task, tmp_path):
    config, data, split = task
    with pytest.raises(MiaError, match="pool mode"):
        plan_pool({}, split, "sideways")
    with pytest.raises(MiaError, match="at least 1"):
        audit.reference_pool(audit.plan_reference_pool(config, data, split), config, data, 0, tmp_path)


def test_a_diverged_models_logits_are_stored_saturated_not_infinite():
    from mia.pool import _half

    stored = _half(np.array([[1e9, -1e9, 1.5]], dtype=np.float32))
    assert np.isfinite(stored).all() and stored[0, 0] > stored[0, 2] > stored[0, 1]


def test_two_writers_of_one_model_file_both_finish_with_a_whole_file(tmp_path, monkeypatch):
    """Two audits of one recipe at once (scripts sharing ./.mia-cache) wrote the same temporary file: the
    second truncated the first's, and the first's rename then failed. Here the second writes whole while
    the first is half-way."""
    import mia.pool
    from mia.signals import Signals

    real_savez, nested = np.savez, []
    signals = Signals(np.zeros((6, 3), np.float32), np.zeros(6, np.int64), np.zeros((6, 3), np.float32),
                      np.zeros((6, 2), np.float32))

    def interleaved(f, **arrays):
        f.write(b"PK half a zip")
        if not nested:
            nested.append("the other writer")
            mia.pool._save_model(tmp_path, 0, np.ones(6, bool), signals, signals)
        f.seek(0)
        real_savez(f, **arrays)

    monkeypatch.setattr(mia.pool.np, "savez", interleaved)
    path = mia.pool._save_model(tmp_path, 0, np.ones(6, bool), signals, signals)
    with np.load(path) as stored:
        assert stored["inclusion"].all() and stored["population_logits"].shape == (6, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["model_00000.npz"]  # no temporary file left


def test_a_pool_folder_names_its_pool_whole_or_says_it_cannot_be_read(task, tmp_path):
    """``pool.json`` was written in place: another audit reading it half-written (or a folder left so by a killed
    one) failed with a JSONDecodeError traceback."""
    from mia.pool import write_identity

    config, data, split = task
    plan = audit.plan_reference_pool(config, data, split, "online")
    write_identity(plan, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["pool.json"]  # no temporary file left
    write_identity(plan, tmp_path)  # read back: the same pool
    (tmp_path / "pool.json").write_text('{"key": "ab')
    with pytest.raises(MiaError, match=r"unreadable pool.json; delete the folder") as err:
        write_identity(plan, tmp_path)
    assert "\n" not in str(err.value)


def test_a_pool_lock_waits_for_its_holder_and_is_freed_when_the_holder_is_killed(tmp_path):
    """The lock that keeps two processes from training one pool twice: a second holder waits, and a
    holder killed mid-training (``kill -9``, nothing run on exit) leaves no stale lock behind."""
    import signal
    import subprocess
    import sys
    import threading

    from mia.pool import pool_lock

    store, key = str(tmp_path), "k" * 64
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mia.pool import pool_lock\n"
                               "with pool_lock(sys.argv[1], sys.argv[2]):\n    print('held', flush=True)\n"
                               "    time.sleep(600)", store, key], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        got = threading.Event()

        def take() -> None:
            with pool_lock(store, key):
                got.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not got.wait(1.0)  # the holder is alive: wait
        holder.send_signal(signal.SIGKILL)
        assert got.wait(30)
        with pool_lock(store, key), pool_lock(store, key):  # asked again inside: no wait on itself
            pass
    finally:
        holder.kill()
        holder.wait()


def said_waiting(capsys, seconds: float = 60) -> bool:
    """Whether a lock's "waiting for another mia process" line reached stderr within ``seconds``."""
    import time

    deadline, said = time.monotonic() + seconds, ""
    while "waiting for another mia process" not in said and time.monotonic() < deadline:
        time.sleep(0.05)
        said += capsys.readouterr().err
    return "waiting for another mia process" in said


class Stalled:
    """``module.name`` replaced by itself, counting its calls and, once entered, waiting for ``release``: a
    process that holds a lock while it trains, for as long as a test needs."""

    def __init__(self, monkeypatch, module, name: str):
        import threading

        self.real, self.calls = getattr(module, name), []
        self.entered, self.release = threading.Event(), threading.Event()
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls.append(1)
        self.entered.set()
        assert self.release.wait(30)
        return self.real(*args, **kwargs)


def test_two_audits_at_once_in_one_cache_folder_train_its_pool_once(tmp_path, monkeypatch, capsys):
    """``run_audit`` without MLflow keeps pools in a folder (``cache_dir``): two scripts auditing one recipe at
    once both trained the pool there; the second now waits for the first and reuses its models."""
    import threading

    fit_many = Stalled(monkeypatch, audit, "fit_many")
    config = audit.resolve_config("digits", train_overrides={"epochs": 2})
    got = {}

    def run(name: str) -> None:
        got[name] = audit.run_audit(config, attacks="loss", reference_models=2, cache_dir=str(tmp_path),
                                    progress=False)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert fit_many.entered.wait(60)  # the first grows the pool, its lock held
    second = threading.Thread(target=run, args=("second",))
    second.start()
    assert said_waiting(capsys)  # it trained its own target, and waits at the pool
    fit_many.release.set()
    first.join(120)
    second.join(120)
    assert len(fit_many.calls) == 1
    assert (got["first"].reference_models_trained, got["second"].reference_models_trained) == (2, 0)
    assert got["first"].metrics["loss"] == got["second"].metrics["loss"]
