"""Derived signals against direct formulas; storage; querying a real torch model."""

import gc

import numpy as np
import pytest
import torch
from torch import nn

from mia.data.base import Dataset
from mia.errors import MiaError
from mia.signals import (SIGNALS, Signals, compute_signals, confidence, correctness, entropy,
                         hconf, log1m_softmax, logit_confidence, loss, mentr)

LOGITS = np.array([[2.0, 1.0, -1.0, 0.5],
                   [0.1, 0.2, 3.0, -2.0],
                   [-1.0, 4.0, 0.0, 0.0],
                   [0.0, 0.0, 0.0, 0.0]])
LABELS = np.array([0, 1, 1, 3])  # row 1: label is not the argmax


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_signals_match_direct_formulas():
    p = _softmax(LOGITS)
    rows = np.arange(len(LABELS))
    py = p[rows, LABELS]
    np.testing.assert_allclose(loss(LOGITS, LABELS), -np.log(py), rtol=1e-12)
    np.testing.assert_allclose(confidence(LOGITS, LABELS), py, rtol=1e-12)
    np.testing.assert_array_equal(correctness(LOGITS, LABELS), [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(entropy(LOGITS, LABELS), -(p * np.log(p)).sum(axis=1), rtol=1e-12)
    other = np.ones_like(p, dtype=bool)
    other[rows, LABELS] = False
    ref = -(1 - py) * np.log(py) - np.where(other, p * np.log(1 - p), 0).sum(axis=1)
    np.testing.assert_allclose(mentr(LOGITS, LABELS), ref, rtol=1e-12)
    np.testing.assert_allclose(log1m_softmax(LOGITS), np.log(1 - p), rtol=1e-12, atol=1e-15)


def test_hconf_is_top1_not_true_label_confidence():
    p = _softmax(LOGITS)
    np.testing.assert_allclose(hconf(LOGITS, LABELS), p.max(axis=1), rtol=1e-12)
    # row 1: label 1 is not the argmax, so hconf differs from the true-label confidence
    assert hconf(LOGITS, LABELS)[1] > confidence(LOGITS, LABELS)[1] * 10


def test_huge_logits_stay_finite():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 800.0, 0.0], [3e38, -3e38, 0.0]], dtype=np.float32)
    y = np.array([0, 0, 1])
    for name, f in SIGNALS.items():
        v = f(z, y)
        assert np.isfinite(v).all(), name
    assert loss(z, y)[0] == 0.0 and loss(z, y)[1] == pytest.approx(800.0)
    # confidently wrong: mentr = -(1-p_y) log p_y - p_top log(1 - p_top) ~ 800 + 800
    assert mentr(z, y)[1] == pytest.approx(1600.0 - np.log(2), rel=1e-9)
    assert entropy(z, y)[0] == 0.0 and hconf(z, y)[0] == 1.0


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    s = Signals(rng.normal(size=(6, 3)).astype(np.float32), rng.integers(0, 3, 6),
                rng.random((6, 3)).astype(np.float32))
    path = s.save(tmp_path / "sig.npz")
    back = Signals.load(path)
    np.testing.assert_array_equal(back.logits, s.logits)
    np.testing.assert_array_equal(back.labels, s.labels)
    np.testing.assert_array_equal(back.sensitivity, s.sensitivity)
    assert back.logits.dtype == np.float32 and back.labels.dtype == np.int64
    plain = Signals.load(Signals(s.logits, s.labels).save(tmp_path / "plain"))
    assert plain.sensitivity is None and (tmp_path / "plain").is_file()
    with pytest.raises(MiaError, match="no signals file"):
        Signals.load(tmp_path / "missing.npz")


def _tabular(n=37, d=5, c=3, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset("toy", torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g),
                   c, "tabular")


def test_compute_signals_shapes_and_logits():
    data = _tabular()
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    idx = np.array([3, 0, 7, 36, 5])
    s = compute_signals(model, data, idx, batch_size=2, device="cpu")
    assert s.logits.shape == (5, 3) and s.logits.dtype == np.float32
    assert s.sensitivity is None
    np.testing.assert_array_equal(s.labels, data.y[idx].numpy())
    np.testing.assert_allclose(s.logits, model(data.x[idx]).detach().numpy(), rtol=1e-5, atol=1e-6)
    full = compute_signals(model, data, idx, sensitivity=True, batch_size=8, device="cpu")
    assert full.sensitivity.shape == (5, 3) and full.sensitivity.dtype == np.float32
    again = compute_signals(model, data, idx, sensitivity=True, batch_size=8, device="cpu")
    np.testing.assert_array_equal(full.sensitivity, again.sensitivity)  # seeded


def test_sensitivity_of_constant_model_is_zero():
    data = _tabular()
    model = nn.Linear(5, 3)
    with torch.no_grad():
        model.weight.zero_()
    s = compute_signals(model, data, np.arange(10), sensitivity=True, device="cpu")
    assert np.all(s.sensitivity == 0.0)


def test_sensitivity_of_linear_model_matches_expectation():
    """For f(x) = Wx + b, softmax(f(x + eps u)) - softmax(f(x)) ~ eps J W u with
    J = diag(p) - p p^T, so E|.|_c / eps = ||(J W)_c|| * sqrt(2 / pi)."""
    data = _tabular(n=4, d=6, c=4, seed=1)
    torch.manual_seed(1)
    model = nn.Linear(6, 4)
    s = compute_signals(model, data, np.arange(4), sensitivity=True, draws=4000, eps=1e-3,
                        batch_size=100_000, device="cpu")
    w = model.weight.detach().double().numpy()
    p = _softmax(s.logits.astype(np.float64))
    expected = np.stack([np.linalg.norm((np.diag(pi) - np.outer(pi, pi)) @ w, axis=1) for pi in p])
    np.testing.assert_allclose(s.sensitivity, expected * np.sqrt(2 / np.pi), rtol=0.1)


def test_bad_sensitivity_settings():
    with pytest.raises(MiaError, match="draws"):
        compute_signals(nn.Linear(5, 3), _tabular(), np.arange(3), sensitivity=True, draws=0,
                        device="cpu")


def test_computing_signals_shows_progress_where_asked(capsys, monkeypatch):
    """The sensitivity's draws and the views are passes over the whole query set that took minutes on a real-size
    set without a word (Purchase100's target: 95 s on one CPU core): a bar counts every query of every pass, and
    the signals are those computed without it."""
    import mia.signals

    bars, tqdm = [], mia.signals.tqdm
    monkeypatch.setattr(mia.signals, "tqdm", lambda *a, **k: bars.append(tqdm(*a, **k)) or bars[-1])
    data = _tabular(n=40)
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    idx = np.arange(40)
    kwargs = dict(sensitivity=True, draws=3, views=[(0, 0, False)], batch_size=8, device="cpu")
    quiet = compute_signals(model, data, idx, **kwargs)
    assert capsys.readouterr().err == ""
    shown = compute_signals(model, data, idx, progress=True, **kwargs)
    assert "signals" in capsys.readouterr().err
    assert bars[-1].n == bars[-1].total == 40 * (1 + 4 + 1)  # logits, 3 draws + the plain input, 1 view
    for name in ("logits", "sensitivity", "phi"):
        np.testing.assert_array_equal(getattr(shown, name), getattr(quiet, name))


def test_phi_is_the_logit_of_the_true_label_confidence():
    """LiRA's and RMIA's statistic, ``phi = log(p_y / (1 - p_y))``, both as the numpy signal and as the
    stored per-view ``phi`` of a queried model (a mutant computing ``log p_y`` in the views survived)."""
    p = _softmax(LOGITS)
    py = p[np.arange(len(LABELS)), LABELS]
    np.testing.assert_allclose(logit_confidence(LOGITS, LABELS), np.log(py / (1 - py)), rtol=1e-12)
    data = _tabular(n=12, d=5, c=3, seed=2)
    torch.manual_seed(2)
    model = nn.Linear(5, 3)
    s = compute_signals(model, data, np.arange(12), views=[(0, 0, False)], batch_size=5, device="cpu")
    assert s.phi.shape == (12, 1) and s.phi.dtype == np.float32
    q = _softmax(s.logits.astype(np.float64))[np.arange(12), s.labels]
    np.testing.assert_allclose(s.phi[:, 0], np.log(q / (1 - q)), rtol=1e-4, atol=1e-5)


def test_querying_keeps_no_piece_per_batch():
    """Per-batch results kept in a list landed between each batch's large temporaries in the C heap, which then
    could not shrink (Texas100's target: 2.0 GB of RSS became 5.3 GB over its sensitivity pass). The results
    go into one array: the tensors alive stay as many from the first batch to the last."""
    from mia.train.predict import predict_logits
    from mia.signals import output_sensitivity

    data, model = _tabular(n=200), nn.Linear(5, 3)

    def census(live: list, at: tuple[int, ...]) -> callable:
        calls = []

        def note(_) -> None:  # a census of a full test heap takes seconds: only where asked
            calls.append(1)
            if len(calls) in at:
                live.append(sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()))
        return note

    for query in (lambda note: output_sensitivity(model, data, np.arange(200), batch_size=22, device="cpu",
                                                  on_batch=note),
                  lambda note: predict_logits(model, data, np.arange(200), batch_size=20, device="cpu",
                                              on_batch=note)):
        calls = []
        query(lambda _: calls.append(1))
        live = []
        query(census(live, (1, len(calls))))
        assert len(calls) >= 10 and len(live) == 2 and live[0] == live[1], live  # as many after the last batch
