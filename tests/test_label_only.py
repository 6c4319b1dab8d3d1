"""Label-only signals and attacks: exact cases by hand, then real memorizing models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import hypergeom
from torch import nn

from mia import audit
from mia.attacks import ATTACKS, ShadowSignals, run_attack
from mia.data import SplitConfig, load_dataset, make_split
from mia.data.augment import crop_flip
from mia.data.base import Dataset
from mia.errors import MiaError
from mia.label_signals import label_only_signals
from mia.metrics import attack_metrics
from mia.models import build_model
from mia.signals import Signals, compute_signals


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small forward passes: on a small shared test box two torch threads stall each
    other at every op (over a minute here instead of ~10 s), so this module uses one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def auc(scores, is_member) -> float:
    return attack_metrics(scores, is_member)["auc"]


# ---------------------------------------------------------------- exact cases


def _linear(weight, bias) -> nn.Linear:
    lin = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        lin.bias.copy_(torch.tensor(bias))
    return lin


def _true_distance(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Distance to the nearest face of a linear classifier's class region; 0 when misclassified.

    A point is correct while ``f_y - f_c > 0`` for every c; the region of y is
    convex, so the nearest boundary point is on the nearest plane ``f_y = f_c``.
    """
    with torch.no_grad():
        f = lin(x)
    w = lin.weight.detach()
    gaps = (f.gather(1, y[:, None]) - f) / (w[y][:, None, :] - w[None]).norm(dim=2)
    gaps = gaps.scatter(1, y[:, None], float("inf"))
    dist = gaps.min(1).values
    return torch.where(f.argmax(1) == y, dist, torch.zeros_like(dist)).numpy()


def _points(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 2


def test_boundary_distance_of_a_linear_binary_classifier_is_exact():
    lin = _linear([[0.6, -0.8], [-0.6, 0.8]], [0.25, -0.25])  # one plane, unit normal, offset 0.25
    x = _points(200, 0)
    y = lin(x).argmax(1).detach()
    y[:20] = 1 - y[:20]  # misclassified
    data = Dataset("plane", x, y, 2, "tabular")
    truth = _true_distance(lin, x, y)
    np.testing.assert_allclose(truth[20:], np.abs(x[20:].numpy() @ [0.6, -0.8] + 0.25), rtol=1e-5)
    got = label_only_signals(lin, data, np.arange(200), kinds=("boundary", "boundary-wb"), seed=0)
    for kind in ("boundary", "boundary-wb"):
        assert (got[kind][:20] == 0).all(), kind
        ratio = got[kind][20:] / truth[20:]
        # both are distances of misclassified points, so never below the truth (float32 slack)
        assert ratio.min() > 1 - 1e-4 and ratio.max() < 1.02, (kind, ratio.min(), ratio.max())


def test_boundary_distance_of_a_three_class_linear_model():
    lin = _linear([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], [0.0, 0.3, -0.2])
    x = _points(300, 1)
    y = lin(x).argmax(1).detach()
    y[:30] = (y[:30] + 1) % 3
    data = Dataset("lin3", x, y, 3, "tabular")
    truth = _true_distance(lin, x, y)
    got = label_only_signals(lin, data, np.arange(300), kinds=("boundary", "boundary-wb"), seed=0)
    assert (got["boundary"][:30] == 0).all() and (got["boundary-wb"][:30] == 0).all()
    wb = got["boundary-wb"][30:] / truth[30:]
    assert wb.min() > 1 - 1e-4 and wb.max() < 1.01, (wb.min(), wb.max())
    # HopSkipJump is a local search: a start on a farther face can end at that face's nearest
    # point, so only most estimates are within 10% (all within 20% would need more queries)
    bb = got["boundary"][30:] / truth[30:]
    assert bb.min() > 1 - 1e-4 and np.median(bb) < 1.01, np.quantile(bb, [.5, .9, 1])
    assert np.mean(bb < 1.1) > 0.9, np.quantile(bb, [.5, .9, 1])


def test_a_white_box_search_that_stops_short_keeps_the_distance_it_travelled():
    """Rows still correct after ``wb_steps`` keep the length of their steps (a lower bound), not the 0 of a
    misclassified row (a mutant giving them 0 survived): one DeepFool step of half the linearized jump on a
    plane stops at half the distance."""
    lin = _linear([[0.6, -0.8], [-0.6, 0.8]], [0.25, -0.25])
    x = _points(50, 4)
    y = lin(x).argmax(1).detach()
    y[:5] = 1 - y[:5]
    data = Dataset("plane", x, y, 2, "tabular")
    truth = _true_distance(lin, x, y)
    got = label_only_signals(lin, data, np.arange(50), kinds=("boundary-wb",), wb_steps=1,
                             wb_overshoot=-0.5)["boundary-wb"]
    assert (got[:5] == 0).all()
    # the step is (|f_c| + 1e-4) / ||w_c|| along the unit normal, ||w_c|| = 2, halved
    np.testing.assert_allclose(got[5:], 0.5 * truth[5:] + 2.5e-5, rtol=1e-4, atol=1e-6)


class _Recorder(nn.Module):
    """A linear model over flattened images that keeps the smallest and largest input it was queried with."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.lin, self.low, self.high = lin, float("inf"), float("-inf")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.numel():
            self.low, self.high = min(self.low, float(z.detach().min())), max(self.high, float(z.detach().max()))
        return self.lin(z.flatten(1))


def test_the_boundary_searches_query_images_only_within_their_pixel_range():
    """Unbounded, the searches queried pixels far outside [0, 255] (HopSkipJump's random starts double their
    radius up to 2^12 / 10 input norms), boundaries no image reaches; as in HopSkipJump, queries stay images."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=gen)
    data = Dataset("tiny", x, torch.zeros(40, dtype=torch.long), 2, "image", mean=(0.5,), std=(0.25,))
    lin = _linear([[0.0] * 16, [0.05] * 16], [0.0, -0.5])  # class 1 where the image is bright: far for dark ones
    data.y = lin(data.inputs(x).flatten(1)).argmax(1).detach()
    lo, hi = float(data.inputs(torch.zeros(1, dtype=torch.uint8))), float(data.inputs(torch.full((1,), 255)))
    for kind in ("boundary", "boundary-wb"):
        model = _Recorder(lin)
        got = label_only_signals(model, data, np.arange(40), kinds=(kind,), seed=0)[kind]
        assert lo - 1e-5 <= model.low and model.high <= hi + 1e-5, (kind, model.low, model.high, lo, hi)
        assert (got > 0).all()  # every image has a boundary inside the box (an all-white or all-black image)


def test_noise_flip_matches_the_hypergeometric_law():
    """Class 1 iff more than 19.5 of 40 bits are set: the survival of k flips is exact."""
    d, k, t = 40, 6, 19.5
    lin = _linear([[-1.0] * d, [1.0] * d], [t, -t])
    ones = np.array([14, 18, 20, 21, 23, 26])
    x = torch.zeros(len(ones), d, dtype=torch.uint8)
    for i, m in enumerate(ones):
        x[i, torch.randperm(d, generator=torch.Generator().manual_seed(i))[:m]] = 1
    y = torch.tensor((ones > t).astype(np.int64))
    data = Dataset("bits", x, y, 2, "tabular")
    got = label_only_signals(lin, data, np.arange(len(ones)), kinds=("noise-flip",), flip_draws=4000,
                             flip_bits=k)["noise-flip"]
    # j of the k flipped bits were set: the count becomes m + k - 2j
    exact = []
    for m, label in zip(ones, y.tolist()):
        j = np.arange(k + 1)
        p = hypergeom(d, m, k).pmf(j)
        exact.append(p[((m + k - 2 * j) > t) == bool(label)].sum())
    np.testing.assert_allclose(got, exact, atol=0.03)


def test_noise_flip_draws_every_set_of_k_distinct_bits_equally_often():
    """Floyd's sampler: k distinct positions a draw, its mask the same set, each of the C(5, 2) = 10 pairs
    a tenth of the draws, and k = d flips every bit."""
    from mia.label_signals import _distinct_bits

    gen = torch.Generator().manual_seed(0)
    positions, mask = _distinct_bits(20000, 5, 2, gen, torch.device("cpu"))
    assert positions.shape == (20000, 2) and mask.shape == (20000, 5)
    assert (positions[:, 0] != positions[:, 1]).all()
    assert (mask.sum(1) == 2).all() and mask.gather(1, positions).all()
    pairs = np.unique(np.sort(positions.numpy(), axis=1), axis=0, return_counts=True)[1]
    assert len(pairs) == 10
    np.testing.assert_allclose(pairs / 20000, 0.1, atol=0.01)  # 4 standard errors
    everything, full = _distinct_bits(50, 7, 7, gen, torch.device("cpu"))
    assert full.all() and (np.sort(everything.numpy(), axis=1) == np.arange(7)).all()


def test_noise_flip_adds_the_flipped_bits_columns_instead_of_querying_every_copy(monkeypatch):
    """A plain Linear-first net (the fc net of Purchase100 and Texas100) runs its first layer once per row, not
    on each of the 100 flipped copies (6.3 of the 7 million multiply-adds of Texas100's fc net), and gives the
    labels of the full forward pass; a net it cannot see into (a subclass) still gets the full pass."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (60, 30), generator=g, dtype=torch.uint8)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(30, 16), nn.Tanh(), nn.Linear(16, 4))
    y = net(x.float()).argmax(1).detach()  # the net's own labels, so that most copies keep them
    y[:10] = (y[:10] + 1) % 4
    data = Dataset("bits", x, y, 4, "tabular")
    rows = []
    forward = nn.Linear.forward
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: (self.in_features == 30 and rows.append(len(x)))
                        or forward(self, x))

    class Opaque(nn.Sequential):
        pass

    fast = label_only_signals(net, data, np.arange(60), kinds=("noise-flip",), batch_size=32)["noise-flip"]
    assert sum(rows) == 60  # the rows themselves, in batches of 32
    rows.clear()
    full = label_only_signals(Opaque(*net), data, np.arange(60), kinds=("noise-flip",), batch_size=32)["noise-flip"]
    assert sum(rows) == 60 * 100
    np.testing.assert_array_equal(fast, full)
    assert full.min() < 0.5 < full.max()


def test_aug_of_a_translation_invariant_model_is_one_where_correct():
    """Mean pixel intensity is unchanged by shifts and flips of a centred digit-sized blob."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(40, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 2:6, 2:6] = torch.randint(0, 256, (40, 1, 4, 4), generator=g, dtype=torch.uint8)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), _linear([[-1.0], [1.0]], [0.06, -0.06]))
    y = model(x.float() / 255).argmax(1).detach()
    y[:5] = 1 - y[:5]
    data = Dataset("blobs", x, y, 2, "image")
    got = label_only_signals(model, data, np.arange(40), kinds=("aug",), flips=True)["aug"]
    np.testing.assert_array_equal(got, np.r_[np.zeros(5), np.ones(35)])


def test_images_go_through_the_model_in_passes_of_at_most_image_query_rows():
    """aug's 128 samples x 50 views went through a CNN in one pass of 6400 images (9.3 GB for a resnet18 on
    CIFAR-10, one CPU core); image passes are capped, and the signals are those of the smaller passes;
    noise-flip's passes hold whole rows' copies, at most query_batch of them."""
    from mia.label_signals import IMAGE_QUERY_ROWS

    seen = []

    class Spy(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x):
            seen.append(len(x))
            return self.net(x)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = Dataset("blobs", torch.randint(0, 256, (130, 1, 8, 8), generator=g, dtype=torch.uint8),
                     torch.randint(0, 2, (130,), generator=g), 2, "image", augment=True)
    cnn = Spy(nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    got = label_only_signals(cnn, images, np.arange(130), kinds=("aug",))["aug"]
    assert seen and max(seen) == IMAGE_QUERY_ROWS and sum(seen) == 130 * 50  # 25 shifts x 2 flips
    small = label_only_signals(cnn, images, np.arange(130), kinds=("aug",), query_batch=IMAGE_QUERY_ROWS)["aug"]
    np.testing.assert_array_equal(got, small)
    seen.clear()
    rows = Dataset("toy", torch.randint(0, 2, (100, 12), generator=g, dtype=torch.uint8),
                   torch.randint(0, 3, (100,), generator=g), 3, "tabular")
    label_only_signals(Spy(nn.Linear(12, 3)), rows, np.arange(100), kinds=("noise-flip",), batch_size=100)
    assert seen == [81 * 100, 19 * 100]  # 8192 // 100 rows, then the rest


# ---------------------------------------------------------------- options, storage, errors


def _tabular(binary: bool) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 2, (30, 12), generator=g, dtype=torch.uint8) if binary
         else torch.randn(30, 12, generator=g))
    return Dataset("toy", x, torch.randint(0, 3, (30,), generator=g), 3, "tabular")


def test_kinds_that_do_not_apply_are_left_out_and_options_are_checked():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    binary, real = _tabular(True), _tabular(False)
    assert set(label_only_signals(net, binary, np.arange(30), hsj_steps=1)) == {"boundary", "noise-flip"}
    assert set(label_only_signals(net, real, np.arange(30), hsj_steps=1)) == {"boundary"}
    digits = load_dataset("digits")
    cnn = build_model("mlp", digits.input_shape, digits.num_classes)
    assert set(label_only_signals(cnn, digits, np.arange(8), hsj_steps=1)) == {"aug", "boundary"}
    # seeded: the same call gives the same numbers, another seed other ones
    a = label_only_signals(net, binary, np.arange(30), kinds=("boundary", "noise-flip"), seed=3)
    b = label_only_signals(net, binary, np.arange(30), kinds=("boundary", "noise-flip"), seed=3)
    c = label_only_signals(net, binary, np.arange(30), kinds=("boundary",), seed=4)
    np.testing.assert_array_equal(a["boundary"], b["boundary"])
    np.testing.assert_array_equal(a["noise-flip"], b["noise-flip"])
    assert not np.array_equal(a["boundary"], c["boundary"])
    assert all(v.dtype == np.float64 and v.shape == (30,) for v in a.values())
    with pytest.raises(MiaError, match="unknown label-only signal"):
        label_only_signals(net, binary, np.arange(3), kinds=("telepathy",))
    with pytest.raises(MiaError, match="no parameter 'flip_bit'"):
        label_only_signals(net, binary, np.arange(3), flip_bit=3)
    with pytest.raises(MiaError, match="flip_draws must be at least 1"):
        label_only_signals(net, binary, np.arange(3), flip_draws="0")


def test_the_costly_signals_show_progress_where_asked(capsys, monkeypatch, tmp_path):
    """The boundary searches took minutes without a word: 75 s after the target trained, 46 s after its
    reference models (digits, 2 CPU cores); the pool's models show the bar when the audit shows its own."""
    import mia.pool

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    label_only_signals(net, _tabular(True), np.arange(30), kinds=("boundary",), hsj_steps=1, progress=True)
    assert "label-only boundary" in capsys.readouterr().err
    label_only_signals(net, _tabular(True), np.arange(30), kinds=("boundary",), hsj_steps=1)
    assert capsys.readouterr().err == ""
    asked = []
    monkeypatch.setattr(mia.pool, "label_only_signals", lambda *a, **k: asked.append(k["progress"]) or {})
    monkeypatch.setattr(audit._attack, "label_only_signals", lambda *a, **k: asked.append(k["progress"]) or {})
    config = audit.resolve_config("digits", train_overrides={"epochs": 1}, label_only=["boundary"])
    audit.run_audit(config, attacks="loss", reference_models=1, cache_dir=str(tmp_path), progress=True)
    assert asked and all(asked)


def test_a_release_that_keeps_its_labels_is_queried_through_its_label_model():
    """MemGuard and confidence masking keep the network's labels by construction: label-only
    signals read them from ``label_model`` and never run the release's costly transform."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))

    class Release(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @property
        def label_model(self):
            return self.model

        def forward(self, x):
            raise AssertionError("label-only queries must not run the output transform")

    data = _tabular(True)
    kinds = ("boundary", "noise-flip")
    direct = label_only_signals(net, data, np.arange(20), kinds=kinds, hsj_steps=1, seed=1)
    routed = label_only_signals(Release(net), data, np.arange(20), kinds=kinds, hsj_steps=1, seed=1)
    for kind in kinds:
        np.testing.assert_array_equal(direct[kind], routed[kind])


def test_white_box_boundary_needs_gradients():
    class LabelsOnly(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):  # a released model that returns rounded one-hot outputs
            with torch.no_grad():
                return nn.functional.one_hot(self.inner(x).argmax(1), 3).float()

    net = LabelsOnly(nn.Linear(12, 3))
    data = _tabular(False)
    data.y = net(data.x).argmax(1)  # correctly classified: the search has to run
    label_only_signals(net, data, np.arange(5), kinds=("boundary",), hsj_steps=1)  # labels suffice
    with pytest.raises(MiaError, match="differentiable"):
        label_only_signals(net, data, np.arange(5), kinds=("boundary-wb",))


def test_signals_save_and_load_label_only(tmp_path):
    rng = np.random.default_rng(0)
    lo = {"aug": rng.random(6), "boundary-wb": rng.random(6) * 3}
    s = Signals(rng.normal(size=(6, 3)).astype(np.float32), rng.integers(0, 3, 6), label_only=lo)
    back = Signals.load(s.save(tmp_path / "sig.npz"))
    assert set(back.label_only) == {"aug", "boundary-wb"}
    for k, v in lo.items():
        np.testing.assert_array_equal(back.label_only[k], v)
    assert Signals.load(Signals(s.logits, s.labels).save(tmp_path / "plain.npz")).label_only is None


def _synthetic(n: int, member_shift: float, seed: int, kind: str) -> tuple[Signals, np.ndarray]:
    rng = np.random.default_rng(seed)
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    values = rng.random(2 * n) + member_shift * member
    return Signals(rng.normal(size=(2 * n, 3)).astype(np.float32), rng.integers(0, 3, 2 * n),
                   label_only={kind: values}), member


def test_attacks_are_registered_threshold_on_shadows_and_name_missing_signals():
    for name, need in [("aug", "aug"), ("boundary", "boundary"), ("noise-flip", "noise-flip")]:
        spec = ATTACKS.get(name)
        assert spec.family == "label-only" and spec.needs == frozenset({f"label_only:{need}"})
    shadow, shadow_member = _synthetic(300, 1.0, 0, "boundary-wb")
    target, member = _synthetic(300, 1.0, 1, "boundary-wb")
    out = run_attack("boundary", target, [ShadowSignals(shadow, shadow_member)], {"mode": "white-box"})
    np.testing.assert_array_equal(out.scores, target.label_only["boundary-wb"])
    # non-members in [0, 1), members in [1, 2): the shadow threshold separates the target's too
    np.testing.assert_array_equal(out.predictions, member)
    missing = r"needs the shadow models' label-only 'boundary' signals.*kinds=\('boundary',\)"
    with pytest.raises(MiaError, match=missing):
        run_attack("boundary", target, [ShadowSignals(shadow, shadow_member)])
    bare = Signals(target.logits, target.labels)
    with pytest.raises(MiaError, match="needs the target's label-only 'boundary-wb' signals"):
        run_attack("boundary", bare, [ShadowSignals(shadow, shadow_member)], {"mode": "white-box"})
    with pytest.raises(MiaError, match=r"'aug' signals, which exist for image data only; on such data train"):
        run_attack("aug", target, [ShadowSignals(shadow, shadow_member)])
    with pytest.raises(MiaError, match=r"'noise-flip' signals, which exist for binary tabular data only \(every "
                                       r"feature 0 or 1\); on such data train with --label-only noise-flip"):
        run_attack("noise-flip", target, [ShadowSignals(shadow, shadow_member)])
    with pytest.raises(MiaError, match="mode must be one of black-box, white-box"):
        run_attack("boundary", target, [ShadowSignals(shadow, shadow_member)], {"mode": "grey"})


# ---------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def purchase():
    """An mlp memorizing 500 Purchase-like rows, and one trained on 500 attacker rows instead."""
    config = audit.resolve_config("purchase-synth", model="mlp", seed=0, train_overrides={"epochs": 20},
                                  dataset_params={"n": 2000})
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    k = len(split.members)
    stranger_rows = split.population[:k]
    models = {name: audit.fit(config, data, rows, split.validation, split.nonmembers, seed=0,
                              progress=False).model
              for name, rows in [("target", split.members), ("stranger", stranger_rows)]}
    return data, split, models, stranger_rows


def _signals(model, data, idx, **kw) -> Signals:
    s = compute_signals(model, data, idx)
    s.label_only = label_only_signals(model, data, idx, seed=0, **kw)
    return s


def test_noise_flip_and_boundary_expose_a_memorizing_tabular_model(purchase):
    data, split, models, stranger_rows = purchase
    query, is_member = split.query()
    # the stranger is also the attacker's shadow: its own rows vs unseen population rows
    unseen = np.setdiff1d(split.population, stranger_rows)
    shadow_rows = np.r_[stranger_rows[:len(unseen)], unseen]
    shadow = ShadowSignals(_signals(models["stranger"], data, shadow_rows, kinds=("noise-flip",)),
                           np.r_[np.ones(len(unseen), bool), np.zeros(len(unseen), bool)])
    for name, lo, hi in [("target", 0.85, 1.0), ("stranger", 0.42, 0.58)]:
        target = _signals(models[name], data, query, kinds=("noise-flip",))
        out = run_attack("noise-flip", target, [shadow])
        m = attack_metrics(out.scores, is_member, out.predictions)
        assert lo < m["auc"] < hi, (name, m)
        if name == "target":
            assert m["balanced_accuracy"] > 0.75, m
    # the boundary distance on a subsample (the searches cost ~500 queries per sample)
    sub = np.r_[np.arange(0, len(query) // 2, 4), np.arange(len(query) // 2, len(query), 4)]
    for name, lo, hi in [("target", 0.85, 1.0), ("stranger", 0.42, 0.58)]:
        got = label_only_signals(models[name], data, query[sub], kinds=("boundary-wb",))
        assert lo < auc(got["boundary-wb"], is_member[sub]) < hi, name


@pytest.fixture(scope="module")
def digits():
    """An mlp on 179 digits (10% of the pool) and one on 179 attacker digits."""
    config = audit.resolve_config("digits", model="mlp", seed=0,
                                  split=SplitConfig(member_fraction=0.1, nonmember_fraction=0.3))
    data = audit.load_data(config)
    split = make_split(len(data), 0, config.split)
    stranger_rows = split.population[:len(split.members)]
    models = {name: audit.fit(config, data, rows, split.validation, split.nonmembers, seed=0,
                              progress=False).model
              for name, rows in [("target", split.members), ("stranger", stranger_rows)]}
    return data, split, models, stranger_rows


def test_boundary_distance_exposes_a_memorizing_image_model(digits):
    data, split, models, _ = digits
    query, is_member = split.query()
    for name, lo, hi in [("target", 0.56, 1.0), ("stranger", 0.42, 0.58)]:
        got = label_only_signals(models[name], data, query, kinds=("boundary", "boundary-wb"))
        for kind, values in got.items():
            assert lo < auc(values, is_member) < hi, (name, kind, auc(values, is_member))
    # the black-box search finds (nearly) the white-box distances, never shorter ones
    ok = got["boundary-wb"] > 0
    ratio = got["boundary"][ok] / got["boundary-wb"][ok]
    assert np.median(ratio) < 1.3 and np.corrcoef(got["boundary"][ok], got["boundary-wb"][ok])[0, 1] > 0.8


def _fit_shifted(data: Dataset, rows: np.ndarray, epochs: int = 100) -> nn.Module:
    """An mlp trained on random 1-pixel shifts of its rows: what the augmentation attack targets."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = build_model("mlp", data.input_shape, data.num_classes)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = data.x[rows], data.y[rows]
    for _ in range(epochs):
        for batch in torch.randperm(len(rows), generator=gen).split(32):
            views = crop_flip(x[batch], padding=1, flip=False, generator=gen).contiguous()
            loss = nn.functional.cross_entropy(net(data.inputs(views)), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def test_augmentation_attack_exposes_a_model_trained_with_shifts(digits):
    data, split, _, stranger_rows = digits
    query, is_member = split.query()
    for rows, lo, hi in [(split.members, 0.6, 1.0), (stranger_rows, 0.42, 0.58)]:
        got = label_only_signals(_fit_shifted(data, rows), data, query, kinds=("aug",), shift=1)["aug"]
        assert lo < auc(got, is_member) < hi


def test_a_kinds_values_do_not_depend_on_the_other_kinds_asked_for():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    data = _tabular(True)
    alone = label_only_signals(net, data, np.arange(20), kinds=("noise-flip",), seed=4)
    together = label_only_signals(net, data, np.arange(20), kinds=("boundary", "noise-flip"), hsj_steps=1, seed=4)
    np.testing.assert_array_equal(alone["noise-flip"], together["noise-flip"])
