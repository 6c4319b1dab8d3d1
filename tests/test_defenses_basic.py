"""Training defenses on a small memorizing task: they train, they leak less, they do what their papers say.

The task: purchase-synth with 2000 rows and 20 classes (500 members, 200
validation rows), the 600-1024-512-256-128 fc net, Adam, 20 epochs. The
undefended target reaches train accuracy 1.0 and test accuracy ~0.87, and
the loss-threshold attack (score -loss, AUC on the balanced query set)
separates members from non-members with AUC ~0.94: plenty for a defense to
reduce. Everything is seeded, on the CPU, so the numbers are reproducible.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from mia.audit import TrainedModel, fit, load_data, resolve_config
from mia.data import make_split
from mia.defenses import make_defense
from mia.defenses.advreg import reference_split
from mia.defenses.mixup import Mixup
from mia.defenses.relaxloss import flattened_targets
from mia.errors import MiaError
from mia.metrics import attack_metrics
from mia.train import predict_logits

EPOCHS = 20


@pytest.fixture(scope="module")
def task():
    config = resolve_config("purchase-synth", dataset_params={"n": 2000, "classes": 20},
                            train_overrides={"epochs": EPOCHS})
    data = load_data(config)
    split = make_split(len(data), 0, config.split)
    return config, data, split


def train(task, defense: str = "none", **params) -> TrainedModel:
    config, data, split = task
    return fit(replace(config, defense=defense, defense_params=params), data, split.members, split.validation,
               split.nonmembers, seed=0, progress=False)


def loss_auc(task, trained: TrainedModel) -> float:
    """AUC of the loss-threshold attack (score -loss) on the balanced query set, on the released outputs."""
    _, data, split = task
    query, is_member = split.query()
    logits = predict_logits(trained.model, data, query)
    loss = F.cross_entropy(logits, data.y[query].cpu(), reduction="none").numpy()
    return float(roc_auc_score(is_member, -loss))


@pytest.fixture(scope="module")
def undefended(task):
    trained = train(task)
    return trained, loss_auc(task, trained)


def check_defended(task, undefended, trained: TrainedModel, max_auc: float | None = None,
                   margin: float = 0.02) -> float:
    """Utility kept (test accuracy > half the undefended one) and leakage lowered by more than noise
    (``margin`` of AUC below the undefended ~0.94, or under ``max_auc``); returns the AUC."""
    base, base_auc = undefended
    auc = loss_auc(task, trained)
    assert trained.test_accuracy > 0.5 * base.test_accuracy
    assert auc < (base_auc - margin if max_auc is None else max_auc), (auc, base_auc)
    return auc


def test_undefended_task_memorizes(undefended):
    base, auc = undefended
    assert base.train_accuracy > 0.99 and base.test_accuracy > 0.7 and auc > 0.9


def loss_tpr_at_1pct(task, trained: TrainedModel) -> float:
    """TPR at 1% FPR of the loss-threshold attack: the low-FPR leakage ``mia tune`` minimizes by default."""
    _, data, split = task
    query, is_member = split.query()
    loss = F.cross_entropy(predict_logits(trained.model, data, query), data.y[query].cpu(), reduction="none")
    return attack_metrics(-loss.numpy(), is_member)["tpr_at_fpr_0.01"]


def test_label_smoothing_caps_member_confidence_and_cuts_low_fpr_leakage(task, undefended):
    # Members' confidence stays near the smoothed target 1 - s + s/C = 0.715 (the optimum of the smoothed
    # loss) instead of 1, so the most confident members no longer stand out: the loss attack's TPR at 1%
    # FPR falls (0.144 -> 0.018 at s = 0.3). Its AUC does not (0.94 either way): the ranking of members
    # above non-members survives the cap, a weak defense by that measure, as HAMP (NDSS 2024) finds too.
    _, data, split = task
    trained = train(task, "label-smoothing", smoothing=0.3)
    assert trained.test_accuracy > 0.5 * undefended[0].test_accuracy
    probs = torch.softmax(predict_logits(trained.model, data, split.members), 1)
    confidence = probs[torch.arange(len(split.members)), data.y[split.members].cpu()]
    assert float(confidence.median()) < 1 - 0.3 + 0.3 / data.num_classes + 0.03
    assert float(confidence.max()) < 0.85
    base_probs = torch.softmax(predict_logits(undefended[0].model, data, split.members), 1)
    assert float(base_probs.max(1).values.median()) > 0.95
    assert loss_tpr_at_1pct(task, trained) < 0.5 * loss_tpr_at_1pct(task, undefended[0])


def test_mixup_mixes_inputs_and_leaks_less(task, undefended, monkeypatch):
    seen = []
    original = Mixup.batch

    def spy(self, inputs, labels, generator):
        mixed, targets = original(self, inputs, labels, generator)
        if not seen:
            seen.append((inputs.clone(), labels.clone(), mixed.detach().clone(), targets.detach().clone()))
        return mixed, targets

    monkeypatch.setattr(Mixup, "batch", spy)
    trained = train(task, "mixup", alpha=1.0)
    inputs, labels, mixed, targets = seen[0]
    num_classes = task[1].num_classes
    assert not torch.equal(mixed, inputs)  # the inputs themselves are mixed, not only the labels
    fractional = (mixed > 0) & (mixed < 1)  # binary rows: a mix of two rows has values lam and 1 - lam
    assert fractional.any()
    assert targets.shape == (len(labels), num_classes)
    assert torch.allclose(targets.sum(1), torch.ones(len(labels)))
    assert ((targets > 0) & (targets < 1)).any()
    check_defended(task, undefended, trained)


def test_relaxloss_ascends_below_alpha_and_flattens():
    defense = make_defense("relaxloss", {"alpha": 1.0})
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 5.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    defense.loss(logits, labels, labels, epoch=0).backward()  # CE ~0.03 < alpha, even epoch: ascent
    assert (logits.grad[[0, 1], labels] > 0).all()  # a descent step on this loss lowers the true logits
    logits.grad = None
    defense.loss(logits, labels, labels, epoch=1).backward()  # odd epoch: flatten, keep p_y
    assert torch.allclose(logits.grad[[0, 1], labels], torch.zeros(2), atol=1e-6)
    assert torch.allclose(logits.grad.sum(1), torch.zeros(2), atol=1e-6)


def test_relaxloss_flattening_caps_the_true_class_at_upper_and_leaves_misclassified_rows_to_cross_entropy():
    from mia.defenses.relaxloss import flattened_targets

    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 0])  # row 0 right and confident (p_y 0.96), row 1 wrong
    soft = flattened_targets(logits, labels, upper=0.5)
    assert torch.allclose(soft[0], torch.tensor([0.5, 0.25, 0.25]))
    p1 = torch.softmax(logits[1], 0)[0]
    assert torch.allclose(soft[1], torch.stack([p1, (1 - p1) / 2, (1 - p1) / 2]))  # below the cap: kept
    defense = make_defense("relaxloss", {"alpha": 5.0, "upper": 0.5})  # CE ~1.5 < alpha: flatten (odd epoch)
    logits.requires_grad_(True)
    defense.loss(logits, labels, labels, epoch=1).backward()
    assert logits.grad[0, 0] > 0  # a descent step lowers the confident row's p_y towards the cap
    ce_grad = torch.softmax(logits[1].detach(), 0) - torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(logits.grad[1], ce_grad / 2, atol=1e-6)  # the wrong row: plain cross-entropy


def test_relaxloss_refuses_settings_the_class_count_rules_out():
    make_defense("relaxloss").bind(3)  # alpha 0.5 < ln 3, upper 1 caps nothing
    # at or below 1/C the flattened target favours another class
    logits, labels = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 0])
    assert flattened_targets(logits, labels, 0.3).argmax(1).ne(labels).all()
    low = make_defense("relaxloss", {"upper": 0.3})
    with pytest.raises(MiaError, match="must exceed 1/classes"):
        low.bind(3)
    low.bind(4)  # 0.3 > 1/4
    with pytest.raises(MiaError, match=r"alpha=2.4 must be below ln\(classes\) = 2.303"):
        make_defense("relaxloss", {"alpha": 2.4}).bind(10)  # ascent past a uniform guess's loss
    make_defense("relaxloss", {"alpha": 2.4}).bind(12)  # ln 12 = 2.48


@pytest.mark.parametrize("name", ["mixup", "instahide"])
def test_soft_label_defenses_span_the_bound_classes(name):
    defense, generator = make_defense(name), torch.Generator().manual_seed(0)
    inputs, labels = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(MiaError, match="call bind"):
        defense.batch(inputs, labels, generator)
    defense.bind(5)
    _, targets = defense.batch(inputs, labels, generator)
    assert targets.shape == (6, 5) and torch.allclose(targets.sum(1), torch.ones(6))


def test_relaxloss_leaks_less(task, undefended):
    check_defended(task, undefended, train(task, "relaxloss", alpha=0.5), margin=0.1)  # measured 0.81 vs 0.94


def test_hamp_loss_is_kl_to_its_soft_labels_minus_the_entropy_bonus():
    from mia.defenses.hamp import soft_label_top1

    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    top1 = soft_label_top1(4, 0.9)
    soft = torch.full((2, 4), (1 - top1) / 3)
    soft[[0, 1], labels] = top1
    p = torch.softmax(logits, 1)
    kl = (soft * (soft / p).log()).sum(1).mean()
    entropy = -(p * p.log()).sum(1).mean()
    for alpha in (0.0, 0.05):
        got = make_defense("hamp", {"entropy_percentile": 0.9, "alpha": alpha}).loss(logits, labels, labels, 0)
        assert float(got) == pytest.approx(float(kl - alpha * 4 * entropy), rel=1e-5)  # high entropy lowers it


def test_hamp_leaks_less_and_keeps_labels(task, undefended):
    _, data, split = task
    trained = train(task, "hamp")
    check_defended(task, undefended, trained, max_auc=0.65)
    query, _ = split.query()
    released, network = predict_logits(trained.model, data, query), predict_logits(trained.network, data, query)
    assert torch.equal(released.argmax(1), network.argmax(1))  # output modification keeps the ranking
    assert not torch.allclose(released, network)
    from mia.label_signals import label_only_signals  # label-only queries read the kept labels, gradients included
    rows = query[:8]
    via_release = label_only_signals(trained.model, data, rows, kinds=("boundary-wb",), seed=0)
    direct = label_only_signals(trained.network, data, rows, kinds=("boundary-wb",), seed=0)
    np.testing.assert_array_equal(via_release["boundary-wb"], direct["boundary-wb"])
    # the training part alone (no output modification) already lowers the loss attack's AUC
    check_defended(task, undefended, train(task, "hamp", modify_output=False))


def test_early_stopping_runs_a_share_of_the_epochs_on_the_recipes_schedule_and_leaks_less(task, undefended):
    """``fraction`` stops the recipe's run (its cosine schedule spanning all EPOCHS) after half of them: the
    weights are those of the plain run's epoch, and the release leaks less than the best of all epochs."""
    config, data, split = task
    trained = train(task, "early-stopping", fraction=0.5, patience=20)
    assert len(trained.history) == EPOCHS // 2 == trained.defense_metrics["early_stopping.epochs_run"]
    plain = fit(replace(config, train=replace(config.train, stop_epoch=EPOCHS // 2)), data, split.members,
                split.validation, split.nonmembers, seed=0, progress=False)
    assert [h["val_accuracy"] for h in trained.history] == [h["val_accuracy"] for h in plain.history]
    check_defended(task, undefended, trained)


def test_early_stopping_stops_and_leaks_less(task, undefended):
    trained = train(task, "early-stopping", patience=3, fraction=1.0)
    epochs = len(trained.history)
    assert epochs < EPOCHS
    assert trained.defense_metrics["early_stopping.epochs_run"] == epochs
    val = [m["val_accuracy"] for m in trained.history]
    assert trained.best_epoch == int(np.argmax(val)) == epochs - 1 - 3  # stopped 3 epochs after the best
    check_defended(task, undefended, trained)


def test_early_stopping_rounds_its_share_and_a_tie_is_no_new_best():
    """``fraction`` of the epochs, rounded (7.5 of 10 -> 8, 0.04 of 10 -> at least 1; a mutant truncating
    survived); patience counts from the first epoch of the best validation accuracy: an equal one is no new
    best (a mutant resetting it on ties survived)."""
    from mia.train import TrainConfig

    def stop_epoch(fraction, epochs=10):
        return make_defense("early-stopping", {"fraction": fraction, "patience": 2}).stopped(
            TrainConfig(epochs=epochs)).epochs_run

    assert [stop_epoch(f) for f in (0.75, 0.04, 0.5, 1.0)] == [8, 1, 5, 10]
    defense = make_defense("early-stopping", {"fraction": 1.0, "patience": 2})
    stops = [defense.stop(epoch, {"val_accuracy": acc}) for epoch, acc in enumerate([0.5, 0.6, 0.6, 0.6])]
    assert stops == [False, False, False, True] and defense.best_epoch == 1


def test_advreg_alternates_and_leaks_less(task, undefended):
    config, data, split = task
    trained = train(task, "advreg", alpha=3.0, k=1)
    steps = trained.defense_metrics["advreg.classifier_steps"]
    assert steps == EPOCHS * 4  # every batch of the 500 members, every epoch (mia_prune: 1 per epoch)
    assert trained.defense_metrics["advreg.attack_steps"] == steps
    assert {"attack_accuracy", "attack_gain"} <= set(trained.history[0])
    check_defended(task, undefended, trained)
    # k attack steps per classifier step
    short = fit(replace(config, defense="advreg", defense_params={"k": 3},
                        train=replace(config.train, epochs=2)),
                data, split.members, split.validation, split.nonmembers, seed=0, progress=False)
    assert short.defense_metrics["advreg.classifier_steps"] == 2 * 4
    assert short.defense_metrics["advreg.attack_steps"] == 3 * 2 * 4


def test_advreg_train_loss_is_the_objective_the_classifier_minimized(task, monkeypatch):
    """docs/protocol.md: ``train_loss`` is CE + alpha * attack gain for AdvReg (it logged the CE alone, 2.93
    where the objective was 0.80 on the first epoch of this task)."""
    import types

    import mia.defenses.advreg as advreg

    config, data, split = task
    seen = []

    def cross_entropy(logits, labels, *args, **kwargs):
        out = F.cross_entropy(logits, labels, *args, **kwargs)
        seen.append((out.item(), len(labels)))
        return out

    monkeypatch.setattr(advreg, "F", types.SimpleNamespace(**{**vars(F), "cross_entropy": cross_entropy}))
    trained = fit(replace(config, defense="advreg", defense_params={"alpha": 3.0},
                          train=replace(config.train, epochs=1)),
                  data, split.members, split.validation, split.nonmembers, seed=0, progress=False)
    ce = sum(v * n for v, n in seen) / sum(n for _, n in seen)
    epoch = trained.history[0]
    assert epoch["train_loss"] == pytest.approx(ce + 3.0 * epoch["attack_gain"], abs=1e-4)


def test_advreg_reference_set_comes_from_validation():
    val = np.arange(100, 200)
    reference, selection = reference_split(val, 0.5, seed=0)
    assert len(reference) == len(selection) == 50
    assert set(reference) | set(selection) == set(val) and not set(reference) & set(selection)
    assert np.array_equal(reference, reference_split(val, 0.5, seed=0)[0])
    with pytest.raises(MiaError, match="reference"):
        reference_split(np.arange(3), 0.1, seed=0)


@pytest.mark.parametrize("name, params, match", [
    ("relaxloss", {"alpha": -1.0}, "alpha=-1.0 must be in"),
    ("mixup", {"alpha": "-0.5"}, "alpha=-0.5 must be in"),
    ("mixup", {"alpha": "lots"}, "alpha='lots' is not a valid float"),
    ("label-smoothing", {"smoothing": 1.5}, r"smoothing=1.5 must be in \[0, 1\]"),
    ("mixup", {"alpha": 0}, r"alpha=0.0 must be in \(0, inf\)"),  # Beta(0, 0) is no distribution
    ("hamp", {"entropy_percentile": 1.5}, "entropy_percentile=1.5 must be in"),
    ("hamp", {"entropy_percentile": float("nan")}, "is not a valid float"),  # NaN passed every range check
    ("memguard", {"epsilon": "nan"}, "is not a valid float"),
    ("dp-sgd", {"epsilon": "inf"}, "is not a valid float"),
    ("selena", {"k": 25.5}, "k=25.5 is not a valid int"),
    ("hamp", {"alpha": -1}, "alpha=-1.0 must be in"),
    ("hamp", {"gamma": 0.5}, "has no parameter 'gamma'"),
    ("early-stopping", {"patience": 0}, "patience=0 must be in"),
    ("early-stopping", {"fraction": 0}, "fraction=0"),
    ("advreg", {"alpha": -3}, "alpha=-3.0 must be in"),
    ("advreg", {"k": 0}, "k=0 must be in"),
    ("no-such-defense", {}, "unknown defense"),
])
def test_bad_hyperparameters_raise(name, params, match):
    with pytest.raises(MiaError, match=match):
        make_defense(name, params)


def test_whole_numbers_given_as_floats_become_ints():
    defense = make_defense("selena", {"k": 25.0, "l": "10"})
    assert (defense.k, defense.l) == (25, 10) and type(defense.k) is int


def test_defaults_and_search_ranges():
    from mia.defenses import DEFENSES

    for name in DEFENSES.names():
        spec = DEFENSES.get(name)
        defense = make_defense(name)
        make_defense(name, defense.params)  # the CLI resolves every parameter, then the run re-checks them
        for key, param in spec.params.items():
            assert getattr(defense, key) == param.default
            if param.type is str and param.choices is None:
                continue  # a free-form value (a file path): nothing to search
            if param.choices is None:
                assert param.allows(param.default)
                if param.search:  # what `mia tune` explores by default: a valid, non-empty range
                    low, high = param.search_range
                    assert low < high and param.allows(low) and param.allows(high)
            else:
                assert param.default in param.choices


def test_every_corner_of_a_defense_search_box_is_a_valid_defense():
    """`mia tune` draws each searched parameter from its own search_range: where a defense constrains two of
    them together (SELENA's l < k, InstaHide's lam_low <= lam_high), a point of the box that breaks it is a
    failed trial (SELENA's old box, k in [5, 50] and l in [1, 24], drew l >= k in 18 % of random trials;
    InstaHide's, lam_low in [0.2, 0.9] and lam_high in [0.3, 1.0], a third). The constraints are monotone, so
    the corners of the box decide. Federated defenses too: a study searches them as well."""
    import itertools

    from mia.defenses import DEFENSES

    for name in DEFENSES.names():
        spec = DEFENSES.get(name)
        box = {k: p.search_range for k, p in spec.params.items()
               if p.search and p.choices is None and p.type in (int, float)}
        for corner in itertools.product(*box.values()):
            make_defense(name, dict(zip(box, corner)))  # raises MiaError on a forbidden combination


@pytest.mark.parametrize("name, params", [
    ("selena", {"k": 3, "l": 2}), ("selena", {"k": 60, "l": 30}), ("early-stopping", {"patience": 30}),
    ("relaxloss", {"alpha": 5.0}), ("label-smoothing", {"smoothing": 0.6}), ("confidence-masking", {"top_k": 20}),
    ("sparsification", {"fraction": 0.001}), ("memguard", {"epsilon": 0.05}), ("advreg", {"alpha": 20.0}),
])
def test_values_outside_the_search_range_but_valid_are_accepted(name, params):
    """The search range is what `mia tune` explores, not a limit on what a user may set."""
    defense = make_defense(name, params)
    assert all(getattr(defense, k) == v for k, v in params.items())


def test_a_searched_parameter_without_a_valid_search_range_is_refused_at_registration():
    from mia.defenses.base import DefenseSpec, HyperParam

    with pytest.raises(MiaError, match="needs a search_range"):
        DefenseSpec("x", object, "", params={"a": HyperParam(float, 1.0, "", low=0.0)})
    with pytest.raises(MiaError, match=r"inside its valid range \(0, inf\)"):
        DefenseSpec("x", object, "", params={"a": HyperParam(float, 1.0, "", low=0.0, open_low=True,
                                                             search_range=(0.0, 1.0))})
    with pytest.raises(MiaError, match="log scale"):
        DefenseSpec("x", object, "", params={"a": HyperParam(float, 1.0, "", low=0.0, log=True,
                                                             search_range=(0.0, 1.0))})


@pytest.mark.parametrize("kind", ["image", "binary", "real"])
def test_hamps_random_inputs_look_like_the_data_they_stand_in_for(kind):
    """HAMP releases the scores of random inputs: images of random pixels, random bits for binary rows, each
    feature uniform in its training range for real-valued rows (then normalized like real queries)."""
    from mia.data.base import Dataset
    from mia.defenses.hamp import noise_sampler

    g = torch.Generator().manual_seed(0)
    if kind == "image":
        x = torch.randint(0, 256, (20, 1, 8, 8), generator=g, dtype=torch.uint8)
        data = Dataset("img", x, torch.arange(20) % 2, 2, "image", mean=(0.5,), std=(0.25,))
    else:
        x = torch.randint(0, 2, (20, 6), generator=g).float() if kind == "binary" else \
            torch.rand(20, 6, generator=g) * torch.arange(1, 7) - 3.0
        data = Dataset("rows", x, torch.arange(20) % 2, 2, "tabular")
    noise = noise_sampler(data, np.arange(20))(500, torch.Generator().manual_seed(1))
    assert noise.shape == (500, *data.input_shape) and noise.dtype == torch.float32
    raw = noise * 0.25 + 0.5 if kind == "image" else noise  # undo the image normalization
    if kind == "image":
        assert raw.min() >= 0 and raw.max() <= 1 and raw.std() > 0.2  # pixels spread over the whole range
    elif kind == "binary":
        assert set(raw.unique().tolist()) == {0.0, 1.0}
    else:
        lo, hi = x.amin(0), x.amax(0)
        assert (raw >= lo).all() and (raw <= hi).all() and ((raw.amax(0) - raw.amin(0)) > 0.8 * (hi - lo)).all()
