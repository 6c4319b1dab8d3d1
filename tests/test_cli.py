"""The ``mia`` command end to end through Click's CliRunner, on tiny digits audits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from entrypoints.cli import format_warning, main

FAST = ["--epochs", "3", "--quiet"]
METRIC_KEYS = ("auc", "balanced_accuracy", "advantage", "tpr_at_fpr_0.1", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run_id_of(output: str, label: str = "run id") -> str:
    match = re.search(rf"{label}: ([0-9a-f]{{32}})", output)
    assert match, output
    return match.group(1)


def assert_user_error(result, *fragments: str) -> None:
    """A one-line message, a non-zero exit, and no traceback."""
    assert result.exit_code != 0
    message = result.output.strip()
    assert "Traceback" not in message
    assert message.startswith("Error:") and len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message


def test_listing_commands():
    datasets = invoke("datasets")
    assert datasets.exit_code == 0
    for name in ("digits", "purchase-synth", "cifar10", "cifar100", "svhn", "cinic10", "tinyimagenet",
                 "purchase100", "texas100", "location", "imagefolder"):
        assert re.search(rf"^{name}\s", datasets.output, re.M), name
    attacks = invoke("attacks")
    assert attacks.exit_code == 0
    for name in ("loss", "confidence", "correctness", "entropy", "mentr", "hconf", "nn", "nn-top3", "nn-cls", "nn-nasr", "samia",
                 "lira-online", "lira-offline", "rmia", "global-threshold", "aug", "boundary", "noise-flip",
                 "selena-adaptive", "loss-i", "loss-ii", "loss-iii", "cos-i", "cos-ii", "cos-iii", "grad-norm",
                 "grad-diff"):
        assert re.search(rf"^{name}\s", attacks.output, re.M), name
    assert "thresholds" in attacks.output  # parameters are listed


def test_our_warnings_are_one_line_and_a_librarys_keep_their_location():
    import mia.defenses.memorization as ours
    import warnings

    assert format_warning(UserWarning("rsw: window too wide"), UserWarning, ours.__file__, 7) == \
        "Warning: rsw: window too wide\n"
    theirs = format_warning(UserWarning("x"), UserWarning, warnings.__file__, 7)
    assert warnings.__file__ in theirs and ":7:" in theirs


def test_the_command_starts_without_the_heavy_analysis_libraries():
    """``mia --help`` and ``mia datasets`` pay for torch but not for scikit-learn, scipy.stats, MLflow,
    Optuna, Opacus or matplotlib (3.5 s to start with scikit-learn and scipy.stats at the top, 2 s without):
    each is imported where a command uses it. The tracked workflows need MLflow, and training no plots (0.7 s)."""
    heavy = ("sklearn", "scipy.stats", "mlflow", "optuna", "opacus", "matplotlib")
    code = (f"import sys, entrypoints.cli; print(*[m for m in {heavy!r} if m in sys.modules], end=';'); "
            f"import mia.experiment; print(*[m for m in {heavy!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split(";") == ["", "mlflow\n"], done.stdout


def test_info_reports_versions_devices_and_store(mlflow_store):
    result = invoke("info")
    assert result.exit_code == 0
    assert "torch" in result.output and "mlflow" in result.output
    assert "cuda" in result.output
    assert "freed memory kept" in result.output  # mia/allocator.py applied on this glibc machine
    from mia.train.loop import cpu_has_bf16

    assert ("cpu bf16: native" if cpu_has_bf16() else "cpu bf16: not native") in result.output
    assert f"sqlite:///{mlflow_store}" in result.output
    # the free space where runs and temporary pool files are written: a full disk stops a run
    assert re.search(r"tracking URI: sqlite:///\S+ \(\d+\.\d GiB free", result.output)
    assert re.search(r"temporary files \(TMPDIR; pools pass through it\): \S+ \(\d+\.\d GiB free", result.output)
    assert "pools shared with other machines (MIA_STORE_LEASE): no, this machine's store" in result.output


def test_low_free_space_is_flagged(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from entrypoints.catalog import _free

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(100 * 2**30, 99 * 2**30, 2**30))
    assert _free(tmp_path / "not" / "yet") == " (1.0 GiB free, low: runs stop when it is full)"
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(100 * 2**30, 50 * 2**30, 50 * 2**30))
    assert _free(tmp_path) == " (50.0 GiB free)"


def test_models_lists_each_model_with_its_data_and_recipe():
    result = invoke("models")
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert "[image/tabular, recipe adam-small]" in lines["mlp"] and "images from 8x8" in lines["resnet18"]
    from mia.models import MODELS

    assert set(lines) == set(MODELS.names())


def test_version_is_the_package_version():
    import mia

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"mia {mia.__version__}"


def test_audit_logs_linked_runs(mlflow_store):
    result = invoke("audit", "--reference-models", "1", "--attacks", "loss,mentr,nn", *FAST)
    assert result.exit_code == 0, result.output
    for name in ("loss", "mentr", "nn"):
        assert re.search(rf"^{name}\s+0\.\d{{4}}", result.output, re.M)
    target_id = run_id_of(result.output, "target run")
    attack_id = run_id_of(result.output, "attack run")

    client = MlflowClient()
    target = client.get_run(target_id)
    assert target.info.status == "FINISHED"
    assert target.data.params["dataset"] == "digits" and target.data.params["train.epochs"] == "3"
    assert len(client.get_metric_history(target_id, "val_accuracy")) == 3
    assert {"test_accuracy", "train_accuracy", "time.train", "time.signals"} <= set(target.data.metrics)
    # the released model's train accuracy is logged after the epochs' (MLflow shows the highest step)
    final = max(client.get_metric_history(target_id, "train_accuracy"), key=lambda m: m.step)
    assert final.step == 3 and target.data.metrics["train_accuracy"] == final.value
    stored = {a.path for a in client.list_artifacts(target_id)} | {
        a.path for d in ("model", "signals") for a in client.list_artifacts(target_id, d)}
    assert {"config.json", "split.npz", "model/checkpoint.pt", "signals/target.npz"} <= stored
    assert "label_only" not in target.data.params  # what was computed with the run, not a setting of it

    attack = client.get_run(attack_id)
    assert attack.data.tags["mia.target_run_id"] == target_id
    assert attack.data.tags["mia.dataset"] == "digits" and attack.data.tags["mia.defense"] == "none"
    metrics = attack.data.metrics
    for name in ("loss", "mentr", "nn"):
        for key in METRIC_KEYS:
            assert 0.0 <= metrics[f"{name}.{key}"] <= 1.0
    assert metrics["test_accuracy"] == pytest.approx(target.data.metrics["test_accuracy"])
    assert metrics["leakage.max_auc"] == max(metrics[f"{n}.auc"] for n in ("loss", "mentr", "nn"))
    assert "time.reference_models" in metrics
    # the evaluation set's size beside the metrics, and a note where an FPR target allows no false positive
    nonmembers = int(attack.data.params["eval.nonmembers"])
    assert int(attack.data.params["eval.members"]) == nonmembers == 449
    assert "449 non-members: tpr_at_fpr_0.001 allows no false positive" in attack.data.tags["mia.low_fpr_note"]
    artifacts = {a.path for a in client.list_artifacts(attack_id)} | {
        a.path for a in client.list_artifacts(attack_id, "plots")}
    assert {"scores.csv", "plots/roc.png"} <= artifacts
    # the logged metrics are those of the logged per-sample scores (not merely numbers in [0, 1])
    import mlflow
    import pandas as pd

    from mia.metrics import attack_metrics

    frame = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=attack_id, artifact_path="scores.csv"))
    member = frame["is_member"].to_numpy().astype(bool)
    for name in ("loss", "mentr", "nn"):
        recomputed = attack_metrics(frame[name].to_numpy(), member)
        for key in ("auc", "advantage", "tpr_at_fpr_0.1", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001"):
            assert metrics[f"{name}.{key}"] == pytest.approx(recomputed[key], abs=1e-9), (name, key)


def test_a_later_attack_computes_the_label_only_signals_training_did_not(mlflow_store, monkeypatch):
    """An audit naming score-based attacks computes no label-only signals; a later attack that reads them
    computes them from the checkpoint, equal to what training would have stored (a twin trained with
    them: same seed, same model), and stores them in the training run, so the next attack reads them. A store
    that refuses the write costs a warning, not the attack."""
    from mlflow.exceptions import MlflowException

    from mia import experiment
    from mia.tracking import TargetRun

    audited = invoke("audit", "--reference-models", "1", "--attacks", "loss", *FAST)
    assert audited.exit_code == 0, audited.output
    target_id = run_id_of(audited.output, "target run")
    assert TargetRun(target_id).signals().label_only is None
    args = ("attack", "--run-id", target_id, "--attacks", "aug,loss", "--reference-models", "1", "--quiet")
    write = MlflowClient.log_artifact

    def refused(self, run_id, *rest, **kwargs):
        if run_id == target_id:
            raise MlflowException("permission denied")
        return write(self, run_id, *rest, **kwargs)

    with monkeypatch.context() as patch, pytest.warns(UserWarning, match="could not store the new signals"):
        patch.setattr(MlflowClient, "log_artifact", refused)
        unstored = invoke(*args)
    assert unstored.exit_code == 0, unstored.output
    # the audit's 1-model pool lacked aug: its model was trained again for it, not counted as a new model
    assert ("reference models: 1, all from the stored pool; 1 of them trained again for label-only signals the "
            "pool lacked") in unstored.output
    assert re.search(r"^aug\s+0\.\d{4}", unstored.output, re.M) and TargetRun(target_id).signals().label_only is None
    later = invoke(*args)
    assert later.exit_code == 0, later.output
    assert re.search(r"^aug\s+0\.\d{4}", later.output, re.M)
    twin = invoke("train", "--label-only", "aug", *FAST)
    added, trained = TargetRun(target_id).signals(), TargetRun(run_id_of(twin.output)).signals()
    np.testing.assert_array_equal(added.logits, trained.logits)
    np.testing.assert_array_equal(added.label_only["aug"], trained.label_only["aug"])

    def again(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(experiment, "label_only_signals", again)
    reread = invoke("attack", "--run-id", target_id, "--attacks", "aug", "--reference-models", "1", "--quiet")
    assert reread.exit_code == 0, reread.output


def test_attack_reuses_the_stored_split(mlflow_store):
    import mlflow

    from mia.train.loop import cpu_has_bf16

    bf16 = cpu_has_bf16()  # --cpu-bf16 where the CPU has it: the recipe, pool included, trains in bf16
    trained = invoke("train", *FAST, "--compile", *(["--cpu-bf16"] if bf16 else []))  # --compile: CUDA only
    assert trained.exit_code == 0, trained.output
    run_id = run_id_of(trained.output)
    params = MlflowClient().get_run(run_id).data.params
    assert params["train.cpu_bf16"] == str(bf16) and params["train.compile"] == "True"
    assert "--compile acts on CUDA only" in trained.output  # this machine has no GPU: said, not refused
    attacked = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--quiet")
    assert attacked.exit_code == 0, attacked.output
    attack_id = run_id_of(attacked.output, "attack run")
    # the reference models stopped where the target did (its best validation epoch, 0-based)
    best_epoch = MlflowClient().get_run(run_id).data.metrics["best_epoch"]
    assert MlflowClient().get_run(attack_id).data.params["reference_stop_epoch"] == str(int(best_epoch) + 1)
    split = np.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="split.npz"))
    scores = Path(mlflow.artifacts.download_artifacts(run_id=attack_id, artifact_path="scores.csv"))
    import pandas as pd

    frame = pd.read_csv(scores)
    assert set(frame.loc[frame.is_member == 1, "index"]) <= set(split["members"])
    assert set(frame.loc[frame.is_member == 0, "index"]) == set(split["nonmembers"])
    # the data of both runs, as the MLflow UI's dataset column shows it: the name, the contents' digest, the use
    fingerprint = MlflowClient().get_run(run_id).data.tags["mia.data_fingerprint"]
    for rid, context in ((run_id, "training"), (attack_id, "evaluation")):
        (used,) = MlflowClient().get_run(rid).inputs.dataset_inputs
        assert (used.dataset.name, used.dataset.digest) == ("digits", fingerprint[:8])
        assert [(t.key, t.value) for t in used.tags] == [("mlflow.data.context", context)]


@pytest.mark.parametrize("args, fragments", [
    (("train", "--dataset", "mnist"), ("unknown dataset 'mnist'", "digits")),
    (("train", "--dataset-param", "n"), ("key=value",)),
    (("train", "--dataset", "purchase-synth", "--dataset-param", "colour=red"), ("colour", "known")),
    (("train", "--dataset", "purchase-synth", "--dataset-param", "n=many"), ("n='many'",)),
    (("train", "--defense", "magic"), ("unknown defense",)),
    (("train", "--scenario", "quantum"), ("unknown scenario",)),
    (("audit", "--attacks", "loss,telepathy"), ("unknown attack 'telepathy'",)),
    (("audit", "--attack-param", "loss.colour=red", "--attacks", "loss", "--reference-models", "1", *FAST),
     ("colour",)),
    (("attack", "--run-id", "0123456789abcdef0123456789abcdef"), ("not found",)),
    # a name no scenario knows is refused before the run is looked up
    (("attack", "--run-id", "0123456789abcdef0123456789abcdef", "--attacks", "lira-onlin"),
     ("unknown attack 'lira-onlin'", "lira-online")),
    (("audit", "--pool", "offline", "--attacks", "lira-online"), ("--pool online",)),
    # under all too: RMIA is not left out, its mode is what the user asked for
    (("audit", "--pool", "offline", "--attack-param", "rmia.mode=online"), ("rmia mode=online", "--pool online")),
    (("audit", "--attacks", "loss", "--attack-param", "lira.variance=fixed"), ("'lira' is not among", "loss")),
    (("audit", "--attacks", "lira-online", "--attack-param", "lira-online.varaince=fixed"), ("varaince",)),
    (("audit", "--attacks", "loss", "--attack-param", "loss.thresholds=bogus"), ("bogus",)),
    (("audit", "--attacks", "noise-flip"), ("binary tabular data only", "digits is image")),
    (("train", "--device", "tpu"), ("unknown device 'tpu'",)),
    # accepted, logged, never computed, and the attack reading them failed later
    (("train", "--label-only", "noise-flip"), ("'noise-flip' (--label-only) exist for binary tabular data only",
                                               "digits is image")),
    (("train", "--device", "cuda:99"), ("--device cuda:99: this machine has",)),
    (("train", "--resume", "0123456789abcdef0123456789abcdef", "--rounds", "3", "--clients", "8"),
     ("its own options", "drop --rounds, --clients")),
    # a FedMIA attack is known, just not for this scenario
    (("audit", "--attacks", "loss,loss-iii"), ("'loss-iii' reads the rounds of a federated run", "centralized")),
    # an error alone, not beside a note that the option is ignored
    (("train", "--from-run", "0123456789abcdef0123456789abcdef", *FAST), ("use it with --scenario pruning",)),
    (("train", "--scenario", "federated", "--from-run", "0123456789abcdef0123456789abcdef", *FAST),
     ("use it with --scenario pruning",)),
    # a missing CSV is refused before the dense model trains, not after
    (("audit", "--scenario", "pruning", "--defense", "rmr", "--defense-param", "mem_scores_csv=nowhere.csv", *FAST),
     ("mem_scores_csv=nowhere.csv: no such file",)),
])
def test_user_errors_are_one_line(mlflow_store, args, fragments):
    assert_user_error(invoke(*args), *fragments)
    if args[0] == "audit":  # refused before anything trained
        experiment = MlflowClient().get_experiment_by_name("mia")
        assert experiment is None or not MlflowClient().search_runs([experiment.experiment_id])


@pytest.mark.parametrize("args, fragments", [
    (("--pruner", "slimming"), ("pruner slimming prunes BatchNorm channels",)),
    (("--model", "wrn10-1", "--norm", "bn", "--defense", "dp-sgd"), ("dp-sgd would replace the pruned model's",)),
    (("--defense", "rmr", "--defense-param", "mem_scores_csv=short.csv"), ("has 2 rows but there are",)),
])
def test_a_pruning_mistake_is_refused_before_the_dense_model_trains(mlflow_store, args, fragments):
    """Each surfaced after every dense epoch had trained (30 on the default recipe), then failed the run."""
    Path("short.csv").write_text("mem_score\n0.1\n0.2\n")
    result = invoke("train", "--scenario", "pruning", *args, *FAST)
    assert_user_error(result, *fragments)
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("mia").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"] and "train_loss" not in runs[0].data.metrics


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--lr", "nan"], ["--weight-decay", "inf"],
                                  ["--scenario", "pruning", "--sparsity", "nan"]])
def test_bad_option_value_is_rejected(mlflow_store, args):
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 2  # a usage error, not a crash
    assert "Error: Invalid value for" in result.output and "Traceback" not in result.output


def test_failed_run_is_marked_failed_with_reason(mlflow_store, tmp_path):
    result = invoke("train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"), "--quiet")
    assert_user_error(result, "cifar-10-batches-py")
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("mia").experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "cifar-10-batches-py" in runs[0].data.tags["mia.failure_reason"]


@pytest.mark.parametrize("artifact", ["signals/target.npz", "split.npz"])
def test_a_corrupt_stored_artifact_is_reported_in_one_line(mlflow_store, artifact):
    run_id = run_id_of(invoke("train", *FAST).output)
    next(Path("mlruns").glob(f"*/{run_id}/artifacts")).joinpath(artifact).write_bytes(b"garbage")
    result = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--quiet")
    assert_user_error(result, f"{artifact} of run {run_id} is corrupt", "retrain")


@pytest.mark.parametrize("artifact, damage, message", [
    ("config.json", b"{not json", "config.json is unreadable"),
    ("config.json", None, "has no config.json; is it a training run made by `mia train`?"),
    ("split.npz", None, "has no split.npz; retrain with `mia train`"),
])
def test_a_training_run_with_a_damaged_or_missing_record_is_a_one_line_error(mlflow_store, artifact, damage, message):
    run_id = run_id_of(invoke("train", *FAST).output)
    stored = next(Path("mlruns").glob(f"*/{run_id}/artifacts")).joinpath(artifact)
    stored.write_bytes(damage) if damage is not None else stored.unlink()
    result = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--quiet")
    assert_user_error(result, message)


def test_a_pool_run_or_an_unfinished_run_given_for_a_training_run_is_a_one_line_error(mlflow_store):
    run_id = run_id_of(invoke("train", *FAST).output)
    done = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--quiet")
    pool_run = MlflowClient().get_run(run_id_of(done.output, "attack run")).data.tags["mia.pool_run_id"]
    result = invoke("attack", "--run-id", pool_run, "--attacks", "loss", "--quiet")
    assert_user_error(result, "holds a reference-model pool; pass a training run")
    MlflowClient().set_terminated(run_id, "FAILED")
    result = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--quiet")
    assert_user_error(result, "is FAILED, not FINISHED; pass a training run that completed")


def test_a_full_disk_is_a_one_line_error_and_the_run_is_marked_failed(mlflow_store, monkeypatch):
    """CI's own disk filled up once: torch.save deep inside the checkpoint's logging raised a traceback."""
    import errno

    import mia.tracking

    def full(state, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(mia.tracking.torch, "save", full)
    result = invoke("train", *FAST)
    assert_user_error(result, "cannot write ", "checkpoint.pt: No space left on device; free space there, or point "
                      "MLFLOW_TRACKING_URI (runs), MIA_CACHE (caches) or TMPDIR at another disk")
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("mia").experiment_id])
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["mia.failure_reason"]


@pytest.mark.parametrize("scenario", [(), ("--scenario", "pruning")])
def test_a_defense_setting_the_data_rules_out_is_a_one_line_error_before_training(mlflow_store, scenario):
    """RelaxLoss's cap at or below 1/classes flattens towards a wrong class; it trained silently. No epoch
    metric: a pruning run refuses it before its dense model trains."""
    result = invoke("train", *scenario, "--defense", "relaxloss", "--defense-param", "upper=0.1", *FAST)
    assert_user_error(result, "relaxloss upper=0.1 must exceed 1/classes = 0.1 for 10 classes")
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("mia").experiment_id])
    assert run.info.status == "FAILED" and not run.data.metrics


def test_only_a_full_or_read_only_disk_reads_as_one(tmp_path):
    import errno
    import sqlite3

    from mia.errors import storage_failure

    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full [SQL: INSERT ...]") from inner
    except RuntimeError as exc:
        assert storage_failure(exc).startswith("the tracking store's database or disk is full")
    assert "use a folder you can write" in storage_failure(OSError(errno.EROFS, "Read-only file system", "/ro"))
    assert storage_failure(OSError(errno.EACCES, "Permission denied", "/data/x")) is None  # reading: not the disk
    assert storage_failure(ValueError("x")) is None


def test_an_interrupted_federated_run_is_killed_and_names_its_resume(mlflow_store, monkeypatch):
    import mia.fl.simulation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mia.fl.simulation, "simulate", interrupted)
    result = invoke("train", "--scenario", "federated", "--rounds", "2", "--quiet")
    assert result.exit_code == 130, result.output
    run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("mia").experiment_id])[0]
    assert run.info.status == "KILLED"
    assert f"mia train --resume {run.info.run_id}" in result.output and "Traceback" not in result.output


def test_a_terminated_run_is_marked_killed_not_left_running(mlflow_store, monkeypatch):
    # `kill`, `timeout`, a batch scheduler or `docker stop` send SIGTERM: the run must not stay RUNNING
    import os
    import signal

    import mia.fl.simulation

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(mia.fl.simulation, "simulate", terminated)
    result = invoke("train", "--scenario", "federated", "--rounds", "2", "--quiet")
    assert result.exit_code == 143, result.output
    run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("mia").experiment_id])[0]
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["mia.failure_reason"]
    assert f"mia train --resume {run.info.run_id}" in result.output and "Traceback" not in result.output
    assert signal.getsignal(signal.SIGTERM) is before  # the command put the handler back


def test_options_of_another_scenario_are_noted_as_ignored(mlflow_store):
    result = invoke("train", "--clients", "5", "--rounds", "3", "--sparsity", "0.5", *FAST)
    assert result.exit_code == 0, result.output
    assert "note: --clients, --rounds apply to --scenario federated; ignored here" in result.output
    assert "note: --sparsity applies to --scenario pruning; ignored here" in result.output


def test_a_run_trained_on_a_gpu_is_attacked_elsewhere_with_device(mlflow_store):
    import json

    run_id = run_id_of(invoke("train", *FAST).output)
    stored = next(Path("mlruns").glob(f"*/{run_id}/artifacts")) / "config.json"
    config = json.loads(stored.read_text())
    config["train"]["device"] = "cuda:9"  # as if trained on a machine with ten GPUs
    stored.write_text(json.dumps(config))
    args = ("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--quiet")
    assert_user_error(invoke(*args), "--device cuda:9: this machine has")
    moved = invoke(*args, "--device", "cpu")
    assert moved.exit_code == 0, moved.output


@pytest.mark.filterwarnings("ignore:dp-sgd. the best RDP order")
def test_a_defense_that_trains_its_own_recipe_logs_what_it_trains_with(mlflow_store):
    import torch

    result = invoke("train", "--epochs", "1", "--batch-size", "32", "--quiet", "--defense", "dp-sgd")
    assert result.exit_code == 0, result.output
    params = MlflowClient().get_run(run_id_of(result.output)).data.params
    assert params["defense_params.batch_size"] == "0" and params["train.batch_size"] == "32"  # as given
    assert params["effective.train.batch_size"] == "128"  # what DP-SGD trained with: 4x the recipe's
    assert float(params["effective.train.lr"]) == 4 * float(params["train.lr"])
    assert "effective.train.epochs" not in params  # the recipe's own
    assert params["train.device"] == "cpu" and params["train.cpu_threads"] == str(torch.get_num_threads())
    # the epsilon it spent is on the console, not only in MLflow, and again under the attack's table
    metrics = MlflowClient().get_run(run_id_of(result.output)).data.metrics
    assert f"privacy: dp.epsilon {metrics['dp.epsilon']:.4g}, dp.delta 1e-05" in result.output
    attacked = invoke("attack", "--run-id", run_id_of(result.output), "--attacks", "loss", "--reference-models", "1",
                      "--quiet")
    assert f"privacy: dp.epsilon {metrics['dp.epsilon']:.4g}" in attacked.output


def test_no_select_best_releases_the_last_epoch(mlflow_store):
    """An undefended baseline trained to the end: the loop otherwise releases its best validation epoch."""
    result = invoke("train", "--epochs", "6", "--no-select-best", "--quiet")
    run = MlflowClient().get_run(run_id_of(result.output)).data
    assert run.params["train.select_best"] == "False" and run.metrics["best_epoch"] == 5


def test_unknown_model_is_rejected(mlflow_store):
    assert_user_error(invoke("train", "--model", "transformer-xl", "--quiet"), "unknown model")


def test_corrupt_checkpoint_is_reported(mlflow_store):
    trained = invoke("train", *FAST)
    run_id = run_id_of(trained.output)
    run_dir = next(Path("mlruns").glob(f"*/{run_id}/artifacts"))
    (run_dir / "model" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (run_dir / "signals" / "target.npz").unlink()  # forces the attack to rebuild the model
    result = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--quiet")
    assert_user_error(result, "corrupt", run_id)


@pytest.mark.parametrize("defense", ["none", "confidence-masking"])
def test_a_run_without_stored_signals_is_queried_again_unless_its_release_transforms_outputs(mlflow_store,
                                                                                                defense):
    """Signals rebuilt from the checkpoint are the network's: right for a plain release, and for a release
    that transforms its outputs (masking, MemGuard, HAMP) a silent bypass of the defense, so refused."""
    trained = invoke("train", "--defense", defense, *FAST)
    run_id = run_id_of(trained.output)
    args = ("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--quiet")
    stored = invoke(*args)
    next(Path("mlruns").glob(f"*/{run_id}/artifacts")).joinpath("signals", "target.npz").unlink()
    rebuilt = invoke(*args)
    if defense == "none":
        auc = [re.search(r"^loss\s+(0\.\d{4})", r.output, re.M).group(1) for r in (stored, rebuilt)]
        assert auc[0] == auc[1], (stored.output, rebuilt.output)
    else:
        assert_user_error(rebuilt, "stored no signals", "before confidence-masking transformed its outputs")


def test_reference_pool_is_cached_and_grown_across_attacks(mlflow_store):
    run_id = run_id_of(invoke("train", *FAST).output)
    client = MlflowClient()

    def attack(models: str, attacks: str = "loss") -> dict:
        result = invoke("attack", "--run-id", run_id, "--attacks", attacks, "--reference-models", models, "--quiet")
        assert result.exit_code == 0, result.output
        return client.get_run(run_id_of(result.output, "attack run")).data

    assert attack("2").metrics["reference_models.trained"] == 2
    again = attack("2")
    assert again.metrics["reference_models.trained"] == 0
    said = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "2", "--quiet").output
    assert "reference models: 2, all from the stored pool" in said
    grown = attack("3", "loss,rmia,lira-offline")
    assert grown.metrics["reference_models.trained"] == 1
    # what the attacks chose on the reference models is on record
    assert grown.params["rmia.chosen.mode"] in ("online", "offline")
    assert float(grown.params["rmia.chosen.temperature"]) in (1.0, 2.0, 4.0, 8.0)
    assert grown.params["lira-offline.chosen.variance"] == "fixed"
    pools = client.search_runs([client.get_experiment_by_name("mia").experiment_id],
                               filter_string="tags.`mia.kind` = 'pool'")
    assert len(pools) == 1 and pools[0].info.run_id == again.tags["mia.pool_run_id"]
    assert pools[0].data.metrics["pool.size"] == 3


def test_a_pool_killed_while_it_grows_keeps_the_models_already_trained(mlflow_store, monkeypatch):
    """Each reference model is stored as soon as it is trained: a 64-model pool killed at model 50 kept
    nothing, every model being logged to the tracking store after the last one."""
    import mia.pool

    run_id = run_id_of(invoke("train", *FAST).output)
    queried, calls = mia.pool.compute_signals, []

    def killed_at_the_third_model(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # two queries per model: the third model's first
            raise KeyboardInterrupt
        return queried(*args, **kwargs)

    monkeypatch.setattr(mia.pool, "compute_signals", killed_at_the_third_model)
    killed = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "3", "--quiet")
    assert killed.exit_code == 130
    client = MlflowClient()
    (pool,) = client.search_runs([client.get_experiment_by_name("mia").experiment_id],
                                 filter_string="tags.`mia.kind` = 'pool'")
    assert pool.info.status == "KILLED" and pool.data.metrics["pool.size"] == 2
    monkeypatch.setattr(mia.pool, "compute_signals", queried)
    again = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "3", "--quiet")
    assert again.exit_code == 0, again.output
    metrics = client.get_run(run_id_of(again.output, "attack run")).data.metrics
    assert metrics["reference_models.trained"] == 1
    assert "reference models: 3, 1 trained now, the rest from the stored pool" in again.output


def test_selena_audit_runs_the_adaptive_attack_under_all(mlflow_store):
    result = invoke("audit", "--defense", "selena", "--defense-param", "k=5", "--defense-param", "l=2",
                    "--reference-models", "1", "--attacks", "all", "--label-only", "", *FAST)
    assert result.exit_code == 0, result.output
    assert re.search(r"^selena-adaptive\s+0\.\d{4}", result.output, re.M)
    metrics = MlflowClient().get_run(run_id_of(result.output, "attack run")).data.metrics
    assert 0.0 <= metrics["selena-adaptive.auc"] <= 1.0 and "time.split_ai" in metrics
    # alone, it trains its own shadow Split-AI and no reference pool (8 asked here would have trained)
    alone = invoke("attack", "--run-id", run_id_of(result.output, "target run"), "--attacks", "selena-adaptive",
                   "--reference-models", "8", "--quiet")
    assert alone.exit_code == 0 and "reference models:" not in alone.output, alone.output
    run = MlflowClient().get_run(run_id_of(alone.output, "attack run")).data
    assert run.metrics["reference_models.trained"] == 0 and "mia.pool_run_id" not in run.tags


FEDERATED = ["--scenario", "federated", "--clients", "3", "--rounds", "4", "--record-every", "2", "--quiet"]


def test_federated_audit_logs_rounds_the_server_view_and_fl_attacks(mlflow_store, tmp_path):
    result = invoke("audit", *FEDERATED, "--attacks", "loss-i,cos-ii,loss-iii,loss", "--reference-models", "1")
    assert result.exit_code == 0, result.output
    for name in ("loss-i", "cos-ii", "loss-iii", "loss"):
        assert re.search(rf"^{name}\s+0\.\d{{4}}", result.output, re.M)
    client = MlflowClient()
    target_id, attack_id = run_id_of(result.output, "target run"), run_id_of(result.output, "attack run")
    assert [m.step for m in client.get_metric_history(target_id, "test_accuracy")][:4] == [1, 2, 3, 4]
    stored = {a.path for a in client.list_artifacts(target_id, "fl")}
    assert {"fl/state-0.pt", "fl/state-1.pt", "fl/signals.npz", "fl/federation.npz"} <= stored
    params = client.get_run(target_id).data.params
    assert "fl.lr" in params and "train.lr" not in params and "train.epochs" not in params  # clients run fl's SGD
    assert params["train.device"] == "cpu" and "train.weight_decay" in params
    attack = client.get_run(attack_id)
    assert attack.data.tags["mia.scenario"] == "federated"
    # curves over the recorded rounds (2 and 4), the last one the attack's final metrics
    history = client.get_metric_history(attack_id, "cos-ii.auc")
    assert sorted(m.step for m in history) == [2, 4]
    assert attack.data.metrics["cos-ii.auc"] == [m for m in history if m.step == 4][0].value
    assert attack.data.metrics["leakage.max_auc"] == max(attack.data.metrics[f"{n}.auc"]
                                                         for n in ("loss-i", "cos-ii", "loss-iii", "loss"))
    artifacts = {a.path for a in client.list_artifacts(attack_id, "plots")} | {
        a.path for a in client.list_artifacts(attack_id)}
    assert {"plots/fl_rounds.png", "fl_scores.csv"} <= artifacts
    # the FL attacks' evaluation set (the target client's members, as many non-members) is its own
    fl_nonmembers = int(attack.data.params["fl_eval.nonmembers"])
    assert int(attack.data.params["fl_eval.members"]) == fl_nonmembers < int(attack.data.params["eval.nonmembers"])
    assert f"{fl_nonmembers} non-members: tpr_at_fpr_0.001" in attack.data.tags["mia.fl_low_fpr_note"]
    # the report's ROC draws the run's strongest attack, FL attacks (fl_scores.csv) included
    strongest = max(("loss-i", "cos-ii", "loss-iii", "loss"), key=lambda n: attack.data.metrics[f"{n}.auc"])
    report = invoke("report", "--roc", attack_id, "--out", str(tmp_path / "report"))
    assert report.exit_code == 0, report.output
    assert re.search(rf"^roc.png: none {attack_id[:6]} {strongest}$", report.output, re.M), report.output


@pytest.mark.parametrize("scenario", [[], FEDERATED])
def test_train_and_test_accuracy_are_the_released_models_on_members_and_non_members(mlflow_store, scenario):
    # as the stored signals of the released (FL: global) model read them, in every scenario
    from mia import tracking

    result = invoke("train", *FAST, *scenario)
    assert result.exit_code == 0, result.output
    target = tracking.TargetRun(run_id_of(result.output))
    signals, (_, is_member) = target.signals(), target.split.query()
    correct = np.asarray(signals.logits).argmax(1) == np.asarray(signals.labels)
    assert target.metrics["train_accuracy"] == pytest.approx(correct[is_member].mean(), abs=1e-6)
    assert target.metrics["test_accuracy"] == pytest.approx(correct[~is_member].mean(), abs=1e-6)
    assert f"train accuracy {target.metrics['train_accuracy']:.4f}" in result.output


def test_killed_federated_run_resumes_to_the_same_model(mlflow_store, monkeypatch):
    import mlflow
    import torch

    import mia.fl.simulation as simulation

    whole = run_id_of(invoke("train", *FEDERATED).output)
    calls, accuracy = [], simulation.accuracy

    def dies_in_round_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the user's Ctrl-C in round 4: round 3 was logged, round 2 checkpointed
        return accuracy(*args, **kwargs)

    monkeypatch.setattr(simulation, "accuracy", dies_in_round_4)
    assert invoke("train", *FEDERATED).exit_code == 130  # Ctrl-C: the run is KILLED
    monkeypatch.undo()
    client = MlflowClient()
    killed = [r for r in client.search_runs([client.get_experiment_by_name("mia").experiment_id])
              if r.info.status == "KILLED"][0].info.run_id
    resumed = invoke("train", "--resume", killed, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert client.get_run(killed).info.status == "FINISHED"
    # round 3 ran again from round 2's checkpoint, logged once
    assert sorted(m.step for m in client.get_metric_history(killed, "test_accuracy")) == [1, 2, 3, 4]

    def weights(run_id):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/checkpoint.pt")
        return torch.load(path, weights_only=True)

    for a, b in zip(weights(whole).values(), weights(killed).values()):
        assert torch.equal(a, b)
    again = invoke("train", "--resume", killed, "--quiet")
    assert again.exit_code != 0 and "nothing to resume" in again.output


PRUNING = ["--scenario", "pruning", "--sparsity", "0.7", "--finetune-epochs", "2", "--epochs", "3", "--quiet"]


def test_pruning_audit_attacks_the_pruned_model_and_its_dense_original(mlflow_store):
    result = invoke("audit", *PRUNING, "--attacks", "loss,nn", "--reference-models", "1")
    assert result.exit_code == 0, result.output
    for name in ("loss", "nn", "dense.loss", "dense.nn"):
        assert re.search(rf"^{re.escape(name)}\s+0\.\d{{4}}", result.output, re.M), name
    assert "pruned to sparsity 0.700" in result.output
    client = MlflowClient()
    target = client.get_run(run_id_of(result.output, "target run"))
    assert target.data.metrics["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert "dense.test_accuracy" in target.data.metrics
    stored = {a.path for d in ("model", "signals") for a in client.list_artifacts(target.info.run_id, d)}
    assert {"model/checkpoint.pt", "model/dense_checkpoint.pt", "signals/dense_target.npz"} <= stored
    attack = client.get_run(run_id_of(result.output, "attack run"))
    metrics = attack.data.metrics
    for name in ("loss", "nn"):
        assert 0 <= metrics[f"{name}.auc"] <= 1 and 0 <= metrics[f"dense.{name}.auc"] <= 1
    assert metrics["dense.leakage.max_auc"] == max(metrics["dense.loss.auc"], metrics["dense.nn.auc"])
    # pruned shadows and dense shadows are different pools
    assert attack.data.tags["mia.pool_key"] != attack.data.tags["mia.dense_pool_key"]
    # both stopped where the target did: the dense epoch, then the released fine-tuning epoch
    stop = str(int(target.data.metrics["best_epoch"]) + 1)
    assert attack.data.params["reference_stop_epoch"] == attack.data.params["dense_reference_stop_epoch"] == stop
    finetune = int(target.data.params["finetune_best_epochs"])
    assert 0 <= finetune < 2 and attack.data.params["reference_finetune_stops"] == str(finetune + 1)
    # a label-only attack asked later: both models' signals computed from their checkpoints and stored
    from mia.tracking import DENSE_SIGNALS, TargetRun

    later = invoke("attack", "--run-id", target.info.run_id, "--attacks", "aug", "--reference-models", "1", "--quiet")
    assert later.exit_code == 0, later.output
    for name in ("aug", "dense.aug"):
        assert re.search(rf"^{re.escape(name)}\s+0\.\d{{4}}", later.output, re.M), name
    stored = TargetRun(target.info.run_id)
    assert "aug" in stored.signals().label_only and "aug" in stored.signals(DENSE_SIGNALS).label_only


def test_pruning_run_logs_its_fine_tuning_epochs_after_the_dense_ones(mlflow_store):
    # the defense acts in fine-tuning: its epochs are the run's per-epoch metrics too (steps after the dense
    # epochs), and the released model's figures come after them
    result = invoke("train", *PRUNING, "--prune-iterations", "2", "--defense", "relaxloss")
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    run_id = run_id_of(result.output)
    for key in ("train_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(3 + 2 * 2)), key
    assert [m.step for m in client.get_metric_history(run_id, "train_accuracy")][-1] == 7
    assert [m.step for m in client.get_metric_history(run_id, "test_accuracy")] == [7]


def test_pruning_defense_reads_mem_scores_from_the_pool_the_dense_attack_reuses(mlflow_store, monkeypatch):
    import mia.defenses.memorization

    # the pool's scores reach the defense: it never estimates its own (mem_source=halves' models)
    monkeypatch.setattr(mia.defenses.memorization, "estimate_mem_scores",
                        lambda *a, **k: pytest.fail("the defense estimated its own mem-scores"))
    result = invoke("audit", *PRUNING, "--defense", "rsw", "--defense-param", "mem_models=3", "--attacks", "loss",
                    "--reference-models", "2")
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    target = client.get_run(run_id_of(result.output, "target run"))
    attack = client.get_run(run_id_of(result.output, "attack run"))
    key = target.data.tags["mia.mem_pool_key"]
    assert attack.data.tags["mia.dense_pool_key"] == key  # one pool: mem-scores, then the dense original's attack
    assert client.get_run(target.data.tags["mia.mem_pool_run_id"]).data.metrics["pool.size"] == 3
    assert attack.data.metrics["reference_models.trained"] == 2  # the pruned shadows only
    assert "time.mem_scores" in target.data.metrics


def test_pruning_from_a_dense_run_reuses_its_model_and_split(mlflow_store):
    import mlflow
    import torch

    dense = run_id_of(invoke("train", "--epochs", "3", "--quiet").output)
    result = invoke("train", *PRUNING, "--from-run", dense)
    assert result.exit_code == 0, result.output
    pruned = run_id_of(result.output)

    def artifact(run_id, path):
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)

    for a, b in zip(torch.load(artifact(dense, "model/checkpoint.pt"), weights_only=True).values(),
                    torch.load(artifact(pruned, "model/dense_checkpoint.pt"), weights_only=True).values()):
        assert torch.equal(a, b)
    assert np.array_equal(np.load(artifact(dense, "split.npz"))["members"],
                          np.load(artifact(pruned, "split.npz"))["members"])
    client = MlflowClient()
    assert client.get_run(pruned).data.params["train.epochs"] == "3"
    # the dense run's recipe, split and seed are taken over: not this command's defaults
    inherit = run_id_of(invoke("train", "--scenario", "pruning", "--finetune-epochs", "1", "--quiet",
                               "--from-run", dense).output)
    params = client.get_run(inherit).data.params
    assert params["train.epochs"] == "3" and params["seed"] == "0"
    for option in (("--model", "cnn-small"), ("--epochs", "50"), ("--member-fraction", "0.5"), ("--seed", "7")):
        other = invoke("train", *PRUNING, "--from-run", dense, *option)
        assert other.exit_code != 0 and f"drop {option[0]}" in other.output, other.output
        assert len(other.output.strip().splitlines()) == 1


def test_adaptive_attack_on_a_pruning_run_with_a_mem_score_csv(mlflow_store, tmp_path):
    """The defender's CSV scores its own training rows: the attacker's defended copies estimate their own."""
    import mlflow

    dense = run_id_of(invoke("train", "--epochs", "3", "--quiet").output)
    members = np.load(mlflow.artifacts.download_artifacts(run_id=dense, artifact_path="split.npz"))["members"]
    csv = tmp_path / "scores.csv"  # the target's training rows only, as a defender writes it
    csv.write_text("index,mem_score\n" + "".join(f"{i},{(i % 7) / 7:.3f}\n" for i in members))
    trained = invoke("train", *PRUNING, "--from-run", dense, "--defense", "rmr",
                     "--defense-param", f"mem_scores_csv={csv},mem_models=2")
    assert trained.exit_code == 0, trained.output
    run_id = run_id_of(trained.output)
    logged = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="defense/scores.csv")
    assert Path(logged).read_text() == csv.read_text()  # reproducible from the run's artifacts
    result = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--adaptive",
                    "--quiet")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, fragment", [
    (("--sparsity", "1.5"), "sparsity must be in (0, 1)"),
    (("--sparsity", "0"), "sparsity must be in (0, 1)"),
    (("--pruner", "random"), "unknown pruner"),
    (("--pruner", "slimming", "--model", "mlp"), "BatchNorm"),
    (("--defense", "rsw", "--member-fraction", "0.4", "--nonmember-fraction", "0.2"), "mem_source=halves"),
])
def test_bad_pruning_input_is_one_line(mlflow_store, args, fragment, monkeypatch):
    """...before anything trains: the dense original was trained before the mem-score pool was checked."""
    from mia import audit

    monkeypatch.setattr(audit._fit, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    result = invoke("train", "--scenario", "pruning", "--epochs", "1", "--quiet", *args)
    assert result.exit_code != 0
    assert fragment in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_adaptive_reference_models_train_with_the_targets_defense(mlflow_store):
    trained = invoke("train", "--defense", "label-smoothing", "--defense-param", "smoothing=0.3", *FAST)
    run_id = run_id_of(trained.output)
    client = MlflowClient()
    pools = {}
    for flag in ("--no-adaptive", "--adaptive"):
        result = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", flag, "--quiet")
        assert result.exit_code == 0, result.output
        attack = client.get_run(run_id_of(result.output, "attack run"))
        assert attack.data.params["adaptive"] == str(flag == "--adaptive")
        pools[flag] = client.get_run(attack.data.tags["mia.pool_run_id"])
    # the attacker's references copy the defense only when asked: two pools, each with its recipe's defense
    assert pools["--no-adaptive"].info.run_id != pools["--adaptive"].info.run_id
    assert pools["--no-adaptive"].data.tags["mia.defense"] == "none"
    assert pools["--adaptive"].data.tags["mia.defense"] == "label-smoothing"


def test_a_target_that_learned_nothing_is_noted_under_its_accuracy_and_its_leakage(mlflow_store):
    """A model at chance leaks nothing whatever its recipe: its chance-level AUCs came without a word."""
    trained = invoke("train", "--epochs", "1", "--lr", "1e-9", "--quiet")
    assert trained.exit_code == 0, trained.output
    note = "note: the target's test accuracy 0.0"
    assert note in trained.output and "near a uniform guess's 0.1000 (10 classes)" in trained.output
    result = invoke("attack", "--run-id", run_id_of(trained.output), "--attacks", "loss", "--reference-models", "1",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert note in result.output and result.output.index(note) > result.output.index("loss ")
    tags = MlflowClient().get_run(run_id_of(result.output, "attack run")).data.tags
    assert tags["mia.near_chance_note"].startswith(note.removeprefix("note: "))


def test_attack_takes_the_training_runs_seed_and_notes_a_tpr_that_reads_fpr_0(mlflow_store):
    run_id = run_id_of(invoke("train", "--seed", "3", *FAST).output)
    result = invoke("attack", "--run-id", run_id, "--attacks", "loss", "--reference-models", "1", "--quiet")
    assert result.exit_code == 0, result.output
    attack = MlflowClient().get_run(run_id_of(result.output, "attack run"))
    assert attack.data.params["seed"] == "3"  # as `mia audit --seed 3` seeds its attacks
    nonmembers = attack.data.params["eval.nonmembers"]
    assert f"note: {nonmembers} non-members: tpr_at_fpr_0.001 allows no false positive" in result.output
    assert "uniform guess" not in result.output  # a target that learned
    # an attack run given for a training run: the error names the training run to pass
    again = invoke("attack", "--run-id", attack.info.run_id, "--attacks", "loss", "--quiet")
    assert again.exit_code != 0 and f"is an attack run; pass its training run, {run_id}" in again.output


def test_key_value_options_take_repeats_and_comma_separated_pairs():
    from entrypoints.options import key_values
    from mia.errors import MiaError

    assert key_values(("a=1", "b=x,c=2", ""), "--defense-param") == {"a": "1", "b": "x", "c": "2"}
    # a comma followed by no "=" belongs to the value (a path), and an empty value is an unset MLproject parameter
    assert key_values(("mem_scores_csv=a,b.csv,k=3",), "--defense-param") == {"mem_scores_csv": "a,b.csv", "k": "3"}
    with pytest.raises(MiaError, match="--defense-param expects key=value, got 'oops'"):
        key_values(("a=1", "oops"), "--defense-param")


def test_the_experiment_option_says_where_runs_go_without_it():
    """`mia attack` puts its run in the training run's experiment; its help said ``mia``."""
    attack_help = " ".join(invoke("attack", "--help").output.split())
    assert "(default: the training run's)" in attack_help
    train_help = " ".join(invoke("train", "--help").output.split())
    assert "(default: $MLFLOW_EXPERIMENT_NAME, else mia)" in train_help


def test_an_attack_that_finds_its_pool_being_trained_waits_and_reuses_it(mlflow_store, tmp_path_factory):
    """Two processes asking for one pool at once (the first trials of ``mia tune --jobs N``, two ``mia attack``
    runs on one target) both found nothing stored and both trained it; the second now waits for the first
    and then trains nothing: on this machine (a lock per pool and store), and on another machine sharing the
    tracking store (a lease in the pool run's tags; its own lock folder here, as another machine has)."""
    import time

    from mlflow.exceptions import MlflowException

    from mia.lease import lease
    from mia.pool import pool_lock
    from mia.tracking import store_name

    run_id = run_id_of(invoke("train", *FAST).output)
    client = MlflowClient()
    args = ["attack", "--run-id", run_id, "--attacks", "loss", "--quiet"]
    first = client.get_run(run_id_of(invoke(*args, "--reference-models", "1").output, "attack run")).data
    elsewhere = {**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("other-machine")), "MIA_STORE_LEASE": "on"}
    with pool_lock(store_name(), first.tags["mia.pool_key"]), \
            lease(client, first.tags["mia.pool_run_id"], "reference pool", (MlflowException,)):  # growing the pool
        waiting = [subprocess.Popen([sys.executable, "-c", "from entrypoints.cli import main; main()", *args,
                                     "--reference-models", "3"], cwd=Path.cwd(), text=True, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for env in (os.environ, elsewhere)]
        for other, holder in zip(waiting, ("", f"(pid {os.getpid()} on ")):  # the lease names its holder
            said, deadline = "", time.monotonic() + 120
            while "waiting for another mia process" not in said and other.poll() is None \
                    and time.monotonic() < deadline:
                said += other.stderr.readline()
            assert "waiting for another mia process" in said and "that is making reference pool" in said, said
            assert holder in said, said
        grown = invoke(*args, "--reference-models", "3")  # this process grows the pool while the others wait
        assert client.get_run(run_id_of(grown.output, "attack run")).data.metrics["reference_models.trained"] == 2
    for other in waiting:
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0, err[-2000:]
        assert client.get_run(run_id_of(out, "attack run")).data.metrics["reference_models.trained"] == 0
    pools = client.search_runs([client.get_experiment_by_name("mia").experiment_id],
                               filter_string="tags.`mia.kind` = 'pool'")
    assert len(pools) == 1 and pools[0].data.metrics["pool.size"] == 3
    assert "mia.lease_holder" not in pools[0].data.tags


def test_a_config_file_gives_the_options_and_the_command_line_wins(mlflow_store):
    """``--config FILE``: an audit described in YAML, as ML Privacy Meter and LeakPro users write them; the file's
    values take the options' own types and checks, and an option typed on the command line wins."""
    Path("train.yaml").write_text("dataset: purchase-synth\ndataset_param: {n: 600}\nmodel: mlp\nepochs: 2\n"
                                  "seed: 3\nselect-best: false\ndefense: relaxloss\ndefense-param: {alpha: 0.5}\n"
                                  "data-dir: null\nquiet: true\n")
    result = invoke("train", "--config", "train.yaml", "--seed", "4")
    assert result.exit_code == 0, result.output
    params = MlflowClient().get_run(run_id_of(result.output)).data.params
    assert (params["dataset"], params["dataset_params.n"], params["model"], params["train.epochs"]) == \
        ("purchase-synth", "600", "mlp", "2")
    assert (params["defense"], params["defense_params.alpha"], params["train.select_best"]) == \
        ("relaxloss", "0.5", "False")
    assert params["seed"] == "4"  # typed on the command line: over the file's 3
    Path("more.yaml").write_text("epochs: 3\n")
    assert_user_error(invoke("train", "--resume", "0" * 32, "--config", "more.yaml"), "drop --epochs")  # given


def test_a_config_file_maps_lists_and_mappings_to_the_options_they_stand_for(tmp_path, monkeypatch):
    from entrypoints.options import config_defaults

    monkeypatch.chdir(tmp_path)
    Path("a.yaml").write_text("attacks: [loss, rmia]\nattack-param: {loss: {thresholds: global}, rmia: "
                               "{a: 0.3}}\nlabel-only: [aug]\npool: offline\nadaptive: 0\nseed: 010\n"
                               "defense-param: [alpha=0.5, upper=0.9]\ndataset-param: n=600\nmodel: null\n"
                               "epochs:\n")
    ctx = main.commands["audit"].make_context("audit", [])
    assert config_defaults(ctx, "a.yaml") == {  # the text as typed: Click's types read it
        "attacks": "loss,rmia", "attack_param": ["loss.thresholds=global", "rmia.a=0.3"], "label_only": "aug",
        "pool_mode": "offline", "adaptive": "0", "seed": "010", "defense_param": ["alpha=0.5", "upper=0.9"],
        "dataset_param": ["n=600"]}  # null and no value: the defaults
    ctx = main.commands["audit"].make_context("audit", ["--config", "a.yaml"])
    assert (ctx.params["seed"], ctx.params["adaptive"]) == (10, False)  # YAML read 010 as octal 8


@pytest.mark.parametrize("content, fragments", [
    ("epoch: 3\n", ["`mia audit` has no option 'epoch'", "known: ", "epochs"]),
    ("epochs: x\n", ["epochs: 'x' is not an integer"]),
    ("member-fraction: 2\n", ["member-fraction: 2.0 is not in the range 0<x<1"]),
    ("model: {a: 1}\n", ["option 'model' takes one value, not a mapping"]),
    ("- dataset\n", ["must map option names to values", "not hold a list"]),
    ("dataset: [\n", ["is not valid YAML (line 2)"]),
    ("epochs: 2.5\n", ["epochs: '2.5' is not an integer"]),  # YAML's float, which Click's int cut to 2
    ("epochs: true\n", ["epochs: 'true' is not an integer"]),
    ("attack-param: {rmia: 4}\n", ["attack-param rmia: give rmia: {key: value}"]),
    ("dataset-param: {n: null}\n", ["dataset-param n: give n: value"]),
    ("attacks: [{loss: 1}]\n", ["option 'attacks' takes a list of values, not of lists or mappings"]),
    ("pool: online\npool-mode: offline\n", ["'pool' and 'pool-mode' are one option; keep one"]),
])
def test_a_bad_config_file_is_a_one_line_error_naming_the_file(mlflow_store, content, fragments):
    Path("bad.yaml").write_text(content)
    assert_user_error(invoke("audit", "--config", "bad.yaml"), "--config bad.yaml", *fragments)


def test_a_missing_config_file_or_one_under_mlflow_run_is_a_one_line_error(mlflow_store, monkeypatch):
    assert_user_error(invoke("audit", "--config", "nope.yaml"), "--config nope.yaml: No such file")
    Path("latin1.yaml").write_bytes("dataset: d\xedgits\n".encode("latin-1"))  # was a UnicodeDecodeError traceback
    assert_user_error(invoke("audit", "--config", "latin1.yaml"), "--config latin1.yaml is not UTF-8 text")
    Path("ok.yaml").write_text("epochs: 2\n")
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)  # what `mlflow run` hands the command, with every -P typed
    assert_user_error(invoke("audit", "--config", "ok.yaml"), "does not combine with `mlflow run`", "-P key=value")


def test_each_run_stores_the_options_that_run_it_again(mlflow_store):
    """``options.yaml`` on a run: the options its command was given, as a ``--config`` file. The run's params
    are TargetConfig names (``train.epochs``), not the options a user types again."""
    import mlflow

    given = ["--dataset", "purchase-synth", "--dataset-param", "n=600", "--model", "mlp", "--epochs", "2",
             "--defense", "relaxloss", "--defense-param", "alpha=0.5", "--quiet"]
    first = run_id_of(invoke("train", *given).output)
    text = mlflow.artifacts.load_text(f"runs:/{first}/options.yaml")
    assert text.startswith("# mia train --config options.yaml runs this again")
    assert "quiet" not in text and "clients" not in text  # neither progress bars nor defaults
    Path("options.yaml").write_text(text)
    again = run_id_of(invoke("train", "--config", "options.yaml").output)
    client = MlflowClient()
    runs = [client.get_run(r).data for r in (first, again)]
    assert runs[0].params == runs[1].params
    assert runs[0].metrics["test_accuracy"] == runs[1].metrics["test_accuracy"]


def test_stored_options_hold_no_storage_password(monkeypatch):
    from entrypoints.options import options_yaml

    args = ["--defense", "relaxloss", "--storage", "postgresql://me:s3cret@db.lab/optuna?sslpassword=k3y&x=1",
            "--trials", "3"]
    with main.commands["tune"].make_context("tune", args) as ctx:
        text = options_yaml(ctx.params)
    assert "s3cret" not in text and "k3y" not in text and "trials: 3" in text
    assert "storage: postgresql://me:***@db.lab/optuna?sslpassword=***&x=1" in text
    monkeypatch.setenv("MIA_TUNE_STORAGE", "postgresql://me:s3cret@db.lab/optuna")
    with main.commands["tune"].make_context("tune", ["--defense", "relaxloss"]) as ctx:
        text = options_yaml(ctx.params)
    assert "s3cret" not in text and "# storage: from $MIA_TUNE_STORAGE, not stored" in text


def test_the_training_run_of_mia_audit_has_the_params_of_mia_train(mlflow_store):
    """``mia audit`` computes the label-only signals its attacks read while the target is in memory; its
    training run logged them as the param ``label_only`` (``['aug']``) where ``mia train`` logged ``[]``, the
    one param that told two identical targets apart."""
    from mia.tracking import TargetRun

    audited = invoke("audit", "--reference-models", "1", "--attacks", "loss,aug", *FAST)
    trained = invoke("train", *FAST)
    client = MlflowClient()
    params = [client.get_run(run_id_of(r.output, label)).data.params
              for r, label in ((audited, "target run"), (trained, "run id"))]
    assert params[0] == params[1]
    assert "aug" in TargetRun(run_id_of(audited.output, "target run")).signals().label_only  # computed all the same
