"""Models trained elsewhere (``mia train/audit --checkpoint FILE --members FILE``, :mod:`mia.imported`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from mia.data import Dataset, SplitConfig, load_dataset
from mia.errors import MiaError
from mia.imported import checked_members, load_network, read_members, split_around
from mia.models import build_model
from test_cli import assert_user_error, invoke, run_id_of


@pytest.fixture(scope="module")
def blobs() -> Dataset:
    return load_dataset("purchase-synth", n=2000)


def train_elsewhere(data: Dataset, rows: np.ndarray, epochs: int = 10) -> torch.nn.Module:
    """A user's own loop, not mia's: Adam on float features, the fc net, until it memorizes its rows."""
    torch.manual_seed(0)
    net = build_model("fc", data.input_shape, data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = data.x[rows].float(), data.y[rows]
    for _ in range(epochs):
        for batch in torch.randperm(len(rows)).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    return net.eval()


# ---------------------------------------------------------------- members files, splits, checkpoints


def test_members_files_in_text_csv_and_npy(tmp_path):
    (tmp_path / "rows.txt").write_text("5\n3\n\n9\n")
    (tmp_path / "rows.csv").write_text("index,label\n5,1\n3,0\n9,2\n")
    np.save(tmp_path / "rows.npy", np.array([9, 5, 3]))
    for name in ("rows.txt", "rows.csv", "rows.npy"):
        assert read_members(tmp_path / name, 10).tolist() == [3, 5, 9]


@pytest.mark.parametrize("content, fragment", [
    ("1\n12\n", "outside 0..9"), ("1\n1\n", "more than once"), ("", "empty"), ("1\nx\n", "one dataset row index"),
])
def test_bad_members_files(tmp_path, content, fragment):
    (tmp_path / "rows.txt").write_text(content)
    with pytest.raises(MiaError, match=fragment):
        read_members(tmp_path / "rows.txt", 10)
    with pytest.raises(MiaError, match="not found"):
        read_members(tmp_path / "missing.txt", 10)
    np.save(tmp_path / "floats.npy", np.array([0.5, 1.5]))
    with pytest.raises(MiaError, match="integers"):
        read_members(tmp_path / "floats.npy", 10)


def test_the_split_keeps_the_members_and_draws_the_rest_from_the_other_rows():
    members = np.arange(0, 1000, 3)
    split = split_around(1000, members, seed=4, config=SplitConfig(nonmember_fraction=0.2, validation_fraction=0.1))
    assert np.array_equal(split.members, members)
    parts = [split.members, split.nonmembers, split.validation, split.population]
    assert sum(map(len, parts)) == 1000 and len(np.unique(np.concatenate(parts))) == 1000
    assert (len(split.nonmembers), len(split.validation)) == (200, 100)
    again = split_around(1000, members[::-1], seed=4, config=SplitConfig(nonmember_fraction=0.2,
                                                                          validation_fraction=0.1))
    assert np.array_equal(again.nonmembers, split.nonmembers)
    with pytest.raises(MiaError, match="too few"):
        split_around(1000, np.arange(900), seed=0)


def test_checkpoints_load_with_their_common_wrappings_and_refuse_what_does_not_fit(blobs, tmp_path):
    net = build_model("fc", blobs.input_shape, blobs.num_classes)
    state = net.state_dict()
    probe = blobs.x[:5].float()
    for name, saved in (("plain", state), ("lightning", {"state_dict": state, "epoch": 3}),
                        ("dataparallel", {f"module.{k}": v for k, v in state.items()})):
        torch.save(saved, tmp_path / f"{name}.pt")
        loaded = load_network(tmp_path / f"{name}.pt", "fc", "bn", blobs)
        assert torch.equal(loaded(probe), net.eval()(probe)), name
    with pytest.raises(MiaError, match="does not fit model 'mlp'"):
        load_network(tmp_path / "plain.pt", "mlp", "bn", blobs)
    torch.save(net, tmp_path / "whole.pt")  # a pickled module, not weights: weights_only refuses it
    with pytest.raises(MiaError, match="cannot read checkpoint"):
        load_network(tmp_path / "whole.pt", "fc", "bn", blobs)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(MiaError, match="not a state dict"):
        load_network(tmp_path / "list.pt", "fc", "bn", blobs)


# ---------------------------------------------------------------- the command


def imported_audit(data: Dataset, tmp_path, trained_on: np.ndarray, listed: np.ndarray) -> dict[str, float]:
    """``mia audit`` of a model trained elsewhere on ``trained_on``, told its members are ``listed``: the attack
    run's metrics, with the target run's ``train_accuracy`` (on the listed rows)."""
    torch.save(train_elsewhere(data, trained_on).state_dict(), tmp_path / "model.pt")
    np.savetxt(tmp_path / "members.txt", listed, fmt="%d")
    result = invoke("audit", "--dataset", "purchase-synth", "--dataset-param", "n=2000", "--model", "fc",
                    "--checkpoint", str(tmp_path / "model.pt"), "--members", str(tmp_path / "members.txt"),
                    "--attacks", "loss,lira-online", "--reference-models", "2", "--epochs", "10",
                    "--label-only", "", "--quiet")
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    target = client.get_run(run_id_of(result.output, "target run"))
    assert target.data.tags["mia.imported"] == "model.pt" and "time.import" in target.data.metrics
    return {**client.get_run(run_id_of(result.output, "attack run")).data.metrics,
            "train_accuracy": target.data.metrics["train_accuracy"]}


def test_a_memorizing_model_trained_elsewhere_leaks_and_one_that_never_saw_its_listed_members_does_not(
        blobs, tmp_path, mlflow_store):
    rows = np.random.default_rng(0).permutation(len(blobs))
    members, strangers = np.sort(rows[:500]), np.sort(rows[500:1000])
    leaky = imported_audit(blobs, tmp_path, members, members)
    # LiRA's 2 reference models follow the attacker's guess of the recipe (mia's, not the user's loop):
    # measured 0.84, well above chance, below the loss attack's 0.999 on so plain a memorizer
    assert leaky["train_accuracy"] == 1.0 and leaky["loss.auc"] > 0.9 and leaky["lira-online.auc"] > 0.7, leaky
    # trained on other rows than it is said to have seen: its "members" are strangers to it (the others are
    # drawn from outside the listed rows, so its real training rows may be among them too: a bound, not 0.5)
    fair = imported_audit(blobs, tmp_path, strangers, members)
    assert fair["train_accuracy"] < 0.5 and fair["loss.auc"] < 0.6, fair


def test_imported_audits_refuse_what_they_cannot_be(tmp_path, mlflow_store):
    (tmp_path / "members.txt").write_text("1\n2\n")
    torch.save({}, tmp_path / "model.pt")
    base = ["audit", "--dataset", "digits", "--quiet"]
    assert_user_error(invoke(*base, "--checkpoint", str(tmp_path / "model.pt")), "--members")
    assert_user_error(invoke(*base, "--members", str(tmp_path / "members.txt")), "--checkpoint")
    assert_user_error(invoke(*base, "--checkpoint", str(tmp_path / "model.pt"), "--members",
                             str(tmp_path / "members.txt"), "--defense", "relaxloss"), "defense none")
    assert_user_error(invoke(*base, "--checkpoint", str(tmp_path / "model.pt"), "--members",
                             str(tmp_path / "members.txt")), "does not fit model 'mlp'")


def test_run_audit_takes_a_model_trained_elsewhere_from_python(blobs, tmp_path):
    from mia import audit

    members = np.sort(np.random.default_rng(1).permutation(len(blobs))[:400])
    torch.save(train_elsewhere(blobs, members).state_dict(), tmp_path / "model.pt")
    np.save(tmp_path / "members.npy", members)
    config = audit.resolve_config("purchase-synth", model="fc", dataset_params={"n": 2000}, label_only=[],
                                  train_overrides={"epochs": 5})
    runs = [audit.run_audit(config, attacks="loss", reference_models=1, cache_dir=str(tmp_path), progress=False,
                            checkpoint=tmp_path / "model.pt", members=rows)
            for rows in (members, tmp_path / "members.npy")]
    assert all(np.array_equal(r.split.members, members) for r in runs)
    assert runs[0].metrics["loss"]["auc"] == runs[1].metrics["loss"]["auc"] > 0.9
    assert runs[0].target.train_accuracy == 1.0
    with pytest.raises(MiaError, match="both checkpoint"):
        audit.run_audit(config, checkpoint=tmp_path / "model.pt")
    with pytest.raises(MiaError, match="more than once"):
        audit.run_audit(config, attacks="loss", checkpoint=tmp_path / "model.pt", members=[1, 1, 2],
                        cache_dir=str(tmp_path), progress=False)


def test_an_image_model_sees_its_inputs_as_its_own_loop_prepared_them(tmp_path):
    """README: images reach an imported model as ``(x / 255 - mean) / std`` with the dataset's statistics. A
    user's loop that prepared them so finds its own accuracies in the run's."""
    from mia import audit

    data = load_dataset("digits")
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    x = (data.x.float() / 255 - mean) / std
    members = np.sort(np.random.default_rng(2).permutation(len(data))[:300])
    torch.manual_seed(0)
    net = build_model("cnn-small", data.input_shape, data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(15):
        for batch in torch.from_numpy(members)[torch.randperm(len(members))].split(32):
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), data.y[batch]).backward()
            opt.step()
    net.eval()
    torch.save(net.state_dict(), tmp_path / "cnn.pt")
    config = audit.resolve_config("digits", model="cnn-small", label_only=[], train_overrides={"epochs": 2})
    report = audit.run_audit(config, attacks="loss", reference_models=1, cache_dir=str(tmp_path), progress=False,
                             checkpoint=tmp_path / "cnn.pt", members=members)
    with torch.no_grad():
        own = [float((net(x[rows]).argmax(1) == data.y[rows]).float().mean())
               for rows in (torch.from_numpy(members), torch.from_numpy(report.split.nonmembers))]
    assert own[0] > 0.95 and 0.6 < own[1] < own[0]  # it learned, and generalizes less than it memorized
    assert (report.target.train_accuracy, report.target.test_accuracy) == pytest.approx(own, abs=1e-6)


# ---------------------------------------------------------------- what users save, and how it could be misread


@pytest.mark.parametrize("content, fragment", [
    ("5,3,9\n", "on one line"),  # a list joined with commas: read as the one row 5 before
    ("5 3 9\n", "on one line"),  # with spaces: said the file was empty
    (",0\n0,5\n1,3\n2,9\n", "index=False"),  # pandas' Series.to_csv(): its index 0, 1, 2 were taken as the rows
    (",row\n0,5\n1,3\n2,9\n", "index=False"),
    ("5.5\n3\n", "5.5"),
])
def test_members_files_that_would_be_misread_are_refused(tmp_path, content, fragment):
    (tmp_path / "rows.txt").write_text(content)
    with pytest.raises(MiaError, match=fragment):
        read_members(tmp_path / "rows.txt", 10)


def test_members_files_as_numpy_and_spreadsheets_write_them(tmp_path):
    np.savetxt(tmp_path / "savetxt.txt", np.array([9, 5, 3]))  # numpy's default format: 9.000000000000000000e+00
    (tmp_path / "rows.tsv").write_text("index\tlabel\n5\t1\n3\t0\n9\t2\n")
    (tmp_path / "excel.csv").write_text("\ufeffindex;label\r\n5;1\r\n3;0\r\n9;2\r\n")
    for name in ("savetxt.txt", "rows.tsv", "excel.csv"):
        assert read_members(tmp_path / name, 10).tolist() == [3, 5, 9], name


def test_members_messages_say_what_to_do(tmp_path):
    with pytest.raises(MiaError, match=r"lists 1 row more than once \(2\)"):
        checked_members([1, 2, 2], 10)
    with pytest.raises(MiaError, match="np.flatnonzero"):
        checked_members(np.arange(10) < 3, 10)
    with pytest.raises(MiaError, match="is a folder"):
        read_members(tmp_path, 10)


def test_checkpoints_of_compiled_models_and_of_the_pytorch_tutorial_load(blobs, tmp_path):
    net = build_model("fc", blobs.input_shape, blobs.num_classes).eval()
    state = net.state_dict()
    probe = blobs.x[:5].float()
    optimizer = torch.optim.Adam(net.parameters())
    for name, saved in (("compiled", {f"_orig_mod.{k}": v for k, v in state.items()}),
                        ("ddp-compiled", {f"module._orig_mod.{k}": v for k, v in state.items()}),
                        ("tutorial", {"epoch": 3, "model_state_dict": state,
                                      "optimizer_state_dict": optimizer.state_dict()})):
        torch.save(saved, tmp_path / f"{name}.pt")
        assert torch.equal(load_network(tmp_path / f"{name}.pt", "fc", "bn", blobs)(probe), net(probe)), name
    torch.save({"epoch": 3, "net": 1}, tmp_path / "other.pt")
    with pytest.raises(MiaError, match="keys epoch, net"):
        load_network(tmp_path / "other.pt", "fc", "bn", blobs)


def test_a_checkpoint_of_another_architecture_is_refused_in_a_short_message(tmp_path):
    data = load_dataset("digits")
    torch.save(build_model("resnet18", data.input_shape, data.num_classes).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(MiaError) as error:
        load_network(tmp_path / "r18.pt", "cnn-small", "bn", data)
    message = str(error.value)
    assert len(message) < 600 and "unexpected" in message and "missing" in message, message


def test_a_checkpoint_with_from_run_is_refused_for_what_it_is(tmp_path, mlflow_store):
    (tmp_path / "members.txt").write_text("1\n2\n")
    torch.save({}, tmp_path / "model.pt")
    # said "use it with --scenario pruning"; followed, that was refused too
    assert_user_error(invoke("train", "--checkpoint", str(tmp_path / "model.pt"), "--members",
                             str(tmp_path / "members.txt"), "--from-run", "0" * 32, "--quiet"),
                      "--from-run", "--checkpoint")


def test_a_federated_run_from_python_refuses_a_dense_run_to_start_from(mlflow_store):
    """The command line refused ``--from-run`` outside pruning; ``train_run`` called from Python trained a
    federation and ignored it."""
    from mia import audit
    from mia.experiment import train_run

    with pytest.raises(MiaError, match="use it with --scenario pruning"):
        train_run(audit.resolve_config("digits", scenario="federated"), from_run="0" * 32, progress=False)
    assert MlflowClient().search_runs(["0"]) == []  # refused before a run opened


def test_a_missing_file_fails_before_any_run_is_opened(tmp_path, mlflow_store):
    (tmp_path / "members.txt").write_text("1\n2\n")
    torch.save({}, tmp_path / "model.pt")
    for checkpoint, members in (("nope.pt", "members.txt"), ("model.pt", "nope.txt")):
        assert_user_error(invoke("train", "--checkpoint", str(tmp_path / checkpoint), "--members",
                                 str(tmp_path / members), "--quiet"), "not found")
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []


def test_lira_online_without_models_that_trained_on_the_audited_samples_says_why_under_an_online_pool():
    """A model trained elsewhere on few listed rows gets reference models that train on as few, which may miss
    every audited sample: the message said "build the pool with --pool online" to a pool that was online."""
    from mia.attacks.base import ReferenceSignals
    from mia.attacks.reference import LiraOnline

    rng = np.random.default_rng(0)
    population_inclusion = np.zeros((2, 50), dtype=bool)
    population_inclusion[:, :20] = True
    reference = ReferenceSignals(rng.normal(size=(40, 1)), rng.normal(size=(2, 40, 1)), np.zeros((2, 40), bool),
                                 rng.normal(size=(50, 1)), rng.normal(size=(2, 50, 1)), population_inclusion)
    with pytest.raises(MiaError, match=r"none of the 2 trained on any of the 40.*\(20\).*--reference-models"):
        LiraOnline(variance="fixed").scores(reference, "fixed")


def test_under_all_an_attack_with_nothing_to_score_is_left_out_and_named_it_fails(blobs, tmp_path, mlflow_store):
    """A model trained elsewhere on 5 listed rows: its one reference model trains on 5 rows too and draws none
    of the 10 audited samples (of its ~1200 candidates), so LiRA online has no IN model. ``--attacks all``
    stopped there, after the pool trained; it now leaves LiRA online out with a warning and scores the rest.
    Named, it still fails."""
    members = np.sort(np.random.default_rng(3).permutation(len(blobs))[:5])
    torch.save(train_elsewhere(blobs, members, epochs=20).state_dict(), tmp_path / "model.pt")
    np.savetxt(tmp_path / "members.txt", members, fmt="%d")
    args = ["audit", "--dataset", "purchase-synth", "--dataset-param", "n=2000", "--model", "fc", "--checkpoint",
            str(tmp_path / "model.pt"), "--members", str(tmp_path / "members.txt"), "--reference-models", "1",
            "--epochs", "3", "--label-only", "", "--quiet"]
    with pytest.warns(UserWarning, match="lira-online left out: attack 'lira-online' needs reference models"):
        result = invoke(*args, "--attacks", "all", "--attack-param", "samia.epochs=1")  # SAMIA: 20 s at 5
    assert result.exit_code == 0, result.output
    metrics = MlflowClient().get_run(run_id_of(result.output, "attack run")).data.metrics
    assert "lira-online.auc" not in metrics and {"loss.auc", "lira-offline.auc", "rmia.auc"} <= set(metrics)
    assert_user_error(invoke(*args, "--attacks", "loss,lira-online"), "none of the 1 trained on any of the 10")


def test_the_last_row_is_n_minus_one_and_the_population_may_not_be_empty():
    """Row n is outside a dataset of n rows (a mutant accepting it survived: a traceback later); members that
    leave exactly enough rows for the non-members and validation but none for a population are refused (a
    mutant accepting an empty population survived)."""
    assert checked_members([0, 9], 10).tolist() == [0, 9]
    with pytest.raises(MiaError, match=r"outside 0\.\.9 \(min 0, max 10\)"):
        checked_members([0, 10], 10)
    config = SplitConfig(nonmember_fraction=0.25, validation_fraction=0.25)
    split = split_around(20, np.arange(9), 0, config)  # 11 others: 5 + 5 + a population of 1
    assert len(split.population) == 1
    with pytest.raises(MiaError, match="10 rows outside the 10 members are too few"):
        split_around(20, np.arange(10), 0, config)
