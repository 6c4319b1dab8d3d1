"""Label-only signals: what the predicted labels alone say about membership, on many perturbed queries.

Label-only attacks (:mod:`mia.attacks.label_only`) read only a model's top-1
labels, but of many perturbed copies of each sample: shifted views (``aug``),
random bit flips of binary rows (``noise-flip``), and the distance to the
decision boundary found by a search (``boundary`` with labels only,
``boundary-wb`` with gradients). Those queries are the costly part, so they
are computed once per model and query set, like the other signals
(:mod:`mia.signals`), and stored in :attr:`mia.signals.Signals.label_only`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mia.data.augment import shift_flip
from mia.data.base import Dataset
from mia.errors import MiaError
from mia.registry import Param, coerce
from mia.train.predict import resolve_device

LABEL_ONLY_KINDS = ("aug", "boundary", "boundary-wb", "noise-flip")
"""Label-only signal kinds: larger means member for every one of them.

* ``aug``: fraction of shifted (and flipped) views still classified correctly
  (Choquette-Choo et al., ICML 2021), image data only;
* ``boundary``: L2 distance to the decision boundary in model-input space,
  found with labels only by a HopSkipJump search (Chen et al., S&P 2020), as
  Li & Zhang (CCS 2021) and Choquette-Choo et al. do; misclassified -> 0;
  image queries stay images (pixels in [0, 255] before normalization), as
  theirs are clipped; tabular rows are not bounded;
* ``boundary-wb``: the same distance found with gradients (DeepFool-style
  iterative linearization, a white-box stand-in for their Carlini-Wagner
  search, its steps clipped to the same range); misclassified -> 0;
* ``noise-flip``: fraction of random k-bit flips that keep the prediction
  correct (Choquette-Choo et al.), binary tabular data only.
"""

DEFAULT_LABEL_ONLY = ("aug", "noise-flip")
"""The kinds ``--attacks all`` reads (each where it applies to the data): the cheap ones; the boundary
searches cost hundreds of queries a row and run where their attacks are named."""

LABEL_ONLY_PARAMS: dict[str, Param] = {
    "batch_size": Param(int, 128, "samples searched at a time"),
    "query_batch": Param(int, 8192, "rows per forward pass of the model"),
    "shift": Param(int, 2, "aug: views shift by every (dy, dx) in [-shift, shift]^2"),
    "flips": Param(bool, None, "aug: also query mirrored views; default: where the data trains with "
                               "flips (data.augment), as a mirrored digit is another digit"),
    "flip_draws": Param(int, 100, "noise-flip: random flips per sample (n)"),
    "flip_bits": Param(int, 10, "noise-flip: bits flipped per draw (k)"),
    "hsj_steps": Param(int, 6, "boundary: HopSkipJump gradient-estimation steps"),
    "hsj_grad_queries": Param(int, 40, "boundary: queries of the first gradient estimate "
                                       "(step t uses this x sqrt(t))"),
    "hsj_init_rounds": Param(int, 12, "boundary: radius doublings tried to find a misclassified start"),
    "hsj_init_draws": Param(int, 8, "boundary: random directions per radius"),
    "delta": Param(float, 0.01, "boundary: probe radius of the gradient estimate, relative to the "
                                "current distance"),
    "tolerance": Param(float, 1e-3, "boundary, boundary-wb: binary-search precision, relative to the "
                                    "distance (divided by sqrt(input size))"),
    "wb_steps": Param(int, 50, "boundary-wb: linearization steps at most"),
    "wb_candidates": Param(int, 5, "boundary-wb: most competitive classes linearized per step"),
    "wb_overshoot": Param(float, 0.02, "boundary-wb: relative overshoot of each linearized step"),
}
"""Options of :func:`label_only_signals`, with their defaults."""

_BISECT_STEPS = 30  # a hard cap; the relative tolerance ends the search after ~10-20 halvings
_HSJ_HALVINGS = 10  # geometric step-size search of HopSkipJump


def label_only_signals(model: nn.Module, data: Dataset, idx, *,
                       kinds: tuple[str, ...] | list[str] = ("aug", "boundary", "noise-flip"),
                       seed: int = 0, device: str | torch.device = "auto", progress: bool = False,
                       **options) -> dict[str, np.ndarray]:
    """Label-only signals of ``model`` on rows ``idx``: ``{kind: float64 N}``, larger = member.

    Label-only attacks (Choquette-Choo et al., ICML 2021; Li & Zhang, CCS
    2021) read only the released model's top-1 labels, but on many perturbed
    copies of each sample; those perturbations are the costly part, so they are
    computed once per model and query set, like the other signals, and stored
    in :attr:`Signals.label_only`. Every query goes through
    ``model(data.inputs(x))`` (the boundary searches perturb ``data.inputs(x)``),
    so a defended model is attacked as its users query it. A release whose
    labels are its network's by construction (MemGuard, confidence masking)
    names that network ``label_model``; it is queried instead, giving the same
    labels without the release's output transform (MemGuard's search made
    these queries most of a MemGuard audit's time). Kinds that do not
    apply to the data (``aug`` on tabular data, ``noise-flip`` on images or
    non-binary features) are left out of the result. ``options`` are those
    of :data:`LABEL_ONLY_PARAMS`. Randomness comes from one generator per kind
    seeded from ``seed``, so a kind's values depend only on the seed and the
    batch sizes, not on which other kinds are computed with it.
    Runs in float32 without autocast: a boundary search at bf16 precision
    would stop at the rounding noise. ``progress`` shows a bar over the rows:
    the boundary searches take minutes (75 s for digits' 898 audited rows on
    2 CPU cores), which passed without a word.
    """
    unknown = sorted(set(kinds) - set(LABEL_ONLY_KINDS))
    if unknown:
        raise MiaError(f"unknown label-only signal(s) {', '.join(unknown)}; "
                       f"known: {', '.join(LABEL_ONLY_KINDS)}")
    opts = _label_only_options(options)
    device = resolve_device(device)
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    todo = applicable_kinds(kinds, data, idx)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in todo}
    model = getattr(model, "label_model", model)
    was_training = model.training
    model.eval()
    # one stream per kind: a kind's values do not change when other kinds are asked for with it
    gens = {k: torch.Generator(device=device).manual_seed(seed * len(LABEL_ONLY_KINDS) + LABEL_ONLY_KINDS.index(k))
            for k in todo}
    bar = tqdm(total=len(idx), desc=f"label-only {','.join(todo)}", unit="row", leave=False,
               disable=not (progress and todo))
    try:
        for start in range(0, len(idx), opts["batch_size"]):
            rows = idx[start:start + opts["batch_size"]].to(data.x.device)
            raw, y = data.x[rows].to(device), data.y[rows].to(device)
            for kind in todo:
                out[kind].append(_LABEL_ONLY_FNS[kind](model, data, raw, y, gens[kind], opts).double().cpu())
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return {k: (torch.cat(v).numpy() if v else np.zeros(0)) for k, v in out.items()}


def _label_only_options(options: dict) -> dict:
    given = coerce(LABEL_ONLY_PARAMS, options, "label_only_signals")
    opts = {k: given.get(k, p.default) for k, p in LABEL_ONLY_PARAMS.items()}
    for k in ("batch_size", "query_batch", "flip_draws", "flip_bits", "hsj_grad_queries",
              "hsj_init_rounds", "hsj_init_draws", "wb_steps", "wb_candidates"):
        if opts[k] < 1:
            raise MiaError(f"label_only_signals option {k} must be at least 1, got {opts[k]}")
    for k in ("shift", "hsj_steps"):
        if opts[k] < 0:
            raise MiaError(f"label_only_signals option {k} must be non-negative, got {opts[k]}")
    for k in ("delta", "tolerance"):
        if not 0 < opts[k] < 1:
            raise MiaError(f"label_only_signals option {k} must be in (0, 1), got {opts[k]}")
    return opts


def applicable_kinds(kinds, data: Dataset, idx) -> list[str]:
    """The kinds of ``kinds`` (once each, in order) that exist for rows ``idx`` of ``data``."""
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    return [k for k in dict.fromkeys(kinds) if _applies(k, data, idx)]


def _applies(kind: str, data: Dataset, idx: torch.Tensor) -> bool:
    """``aug`` needs images, ``noise-flip`` binary tabular rows; the boundary works on any input."""
    if kind == "aug":
        return data.kind == "image"
    if kind == "noise-flip":
        if data.kind != "tabular":
            return False
        raw = data.x[idx.to(data.x.device)]
        return bool(((raw == 0) | (raw == 1)).all())
    return True


IMAGE_QUERY_ROWS = 1024
"""Images per forward pass at most, whatever ``query_batch`` says: a CNN's activations are tens of times its
input, and ``aug``'s 128 samples x 50 views went through in one pass of 6400 images, which took 9.3 GB for a
``resnet18`` on CIFAR-10 (4.2 GB for ``cnn-small``) where passes of 1024 take 2.5 GB, in the same time
(one CPU core). Only how the forward passes are cut changes, not the signals."""


def _labels(model: nn.Module, z: torch.Tensor, query_batch: int) -> torch.Tensor:
    """Top-1 labels of model inputs ``z``, ``query_batch`` rows per forward pass (images: at most
    :data:`IMAGE_QUERY_ROWS`)."""
    if len(z) == 0:
        return torch.zeros(0, dtype=torch.long, device=z.device)
    step = query_batch if z.dim() <= 2 else min(query_batch, IMAGE_QUERY_ROWS)
    with torch.no_grad():
        return torch.cat([model(z[i:i + step]).argmax(1) for i in range(0, len(z), step)])


def _aug_fraction(model: nn.Module, data: Dataset, raw: torch.Tensor, y: torch.Tensor,
                  gen: torch.Generator, opts: dict) -> torch.Tensor:
    """Fraction of the ``(2 shift + 1)^2`` shifts (x 2 flips) classified as ``y``.

    Choquette-Choo et al. query up to 81 crops x 2 flips of a training-time
    augmentation; a member, fitted under those augmentations, stays correct on
    more of them than a non-member.
    """
    s = opts["shift"]
    flips = (False, True) if (data.augment if opts["flips"] is None else opts["flips"]) else (False,)
    views = [shift_flip(raw, dy, dx, f) for f in flips for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
    batch = data.inputs(torch.cat(views))
    correct = _labels(model, batch, opts["query_batch"]).view(len(views), len(raw)) == y
    return correct.float().mean(0)


def _noise_flip_fraction(model: nn.Module, data: Dataset, raw: torch.Tensor, y: torch.Tensor,
                         gen: torch.Generator, opts: dict) -> torch.Tensor:
    """Fraction of ``n`` random flips of ``k`` distinct bits that keep the prediction ``y``.

    The binary-feature counterpart of the augmentation attack (Choquette-Choo
    et al. 2021): a member sits deeper inside its class region, so more of its
    noisy copies keep the label. A forward pass holds the ``n`` copies of whole
    rows, at most ``query_batch`` copies (at least one row).
    """
    n, d = opts["flip_draws"], raw.shape[1]
    k = min(opts["flip_bits"], d)
    per = max(1, opts["query_batch"] // n)  # rows per forward pass
    layers = _linear_first(model, data)
    if layers is not None:  # each row's first layer once; a draw adds the weight columns of its k flipped bits
        first, rest = layers
        with torch.no_grad():
            base, columns = first(data.inputs(raw)), first.weight.t().contiguous()
    correct = []
    for start in range(0, len(raw), per):
        rows = raw[start:start + per]
        bits, flipped = _distinct_bits(len(rows) * n, d, k, gen, raw.device)
        if layers is None:
            copies = rows.repeat_interleave(n, dim=0)
            labels = _labels(model, data.inputs(torch.where(flipped, 1 - copies, copies)), len(copies))
        else:
            owner = torch.arange(len(rows), device=raw.device).repeat_interleave(n)
            sign = 1.0 - 2.0 * rows[owner[:, None], bits].to(columns.dtype)  # 0 -> 1 adds the column, 1 -> 0 takes it
            with torch.no_grad():
                moved = nn.functional.embedding_bag(bits, columns, per_sample_weights=sign, mode="sum")
                hidden = moved.view(len(rows), n, -1).add_(base[start:start + per, None]).flatten(0, 1)
                labels = rest(hidden).argmax(1)
        correct.append((labels.view(len(rows), n) == y[start:start + per, None]).float().mean(1))
    return torch.cat(correct)


def _distinct_bits(draws: int, d: int, k: int, gen: torch.Generator,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` distinct positions out of ``d`` for each of ``draws`` draws, every ``k``-subset equally likely:
    ``(positions, mask)``, a ``draws x k`` index tensor and the ``draws x d`` boolean mask of the same sets.

    Floyd's algorithm (Bentley & Floyd, CACM 1987), vectorized over draws: ``k`` random integers a draw,
    where ranking ``d`` uniform numbers a draw (``rand(...).topk(k)``) drew ``d``: on Purchase100's 600
    features and its ``fc`` net that ranking was a quarter of noise-flip's time, the largest part after the
    net itself (2 cores), and it grows with the features (Texas100: 6169) while the net's part does not.
    """
    positions = torch.empty((draws, k), dtype=torch.long, device=device)
    taken = torch.zeros((draws, d), dtype=torch.bool, device=device)
    every = torch.arange(draws, device=device)
    for i, j in enumerate(range(d - k, d)):
        t = torch.randint(0, j + 1, (draws,), generator=gen, device=device)
        t = torch.where(taken[every, t], j, t)  # drawn before: take j, which no earlier step could take
        taken[every, t] = True
        positions[:, i] = t
    return positions, taken


def _linear_first(model: nn.Module, data: Dataset) -> tuple[nn.Linear, nn.Module] | None:
    """``(first, rest)`` where ``model`` is a plain ``nn.Linear``, or a plain ``nn.Sequential`` whose first
    layer (after any ``nn.Flatten``, a no-op on rows) is one, on tabular rows fed as they are; else None.

    Then a flip of ``k`` bits moves the first layer's output by ``k`` of its weight columns, and
    :func:`_noise_flip_fraction` adds those instead of multiplying every flipped copy by the whole weight:
    the first layer is most of the ``fc`` net (Texas100's 6169 inputs: 6.3 of its 7 million
    multiply-adds), and noise-flip's 100 copies of every audited and population row made it the longest
    part of a Texas100 or Purchase100 audit on a CPU (one core: Texas100 2.9x faster, 44 -> 125 rows a
    second; Purchase100 1.2x; the same values). Subclasses and layers with hooks (a pruning
    reparametrization) keep the full forward pass.
    """
    if data.kind != "tabular" or type(data).inputs is not Dataset.inputs:
        return None
    if type(model) is nn.Linear:
        layers = [model]
    elif type(model) is nn.Sequential:
        layers = list(model)
        while layers and type(layers[0]) is nn.Flatten:
            layers.pop(0)
    else:
        return None
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (model, *layers[:1]))
    if not layers or type(layers[0]) is not nn.Linear or hooked:
        return None
    return layers[0], nn.Sequential(*layers[1:])


def _is_adversarial(model: nn.Module, zf: torch.Tensor, y: torch.Tensor, shape: torch.Size,
                    query_batch: int) -> torch.Tensor:
    """Whether flattened model inputs ``zf`` are misclassified (label ``y`` per row)."""
    return _labels(model, zf.view(-1, *shape), query_batch) != y


Box = tuple[torch.Tensor, torch.Tensor] | None
"""Per-coordinate bounds of a valid flattened model input, or ``None`` where any input is valid."""


def _input_box(data: Dataset, raw: torch.Tensor) -> Box:
    """Where a search may query: images stay images (every pixel in [0, 255] before normalization), as
    HopSkipJump and Choquette-Choo et al. clip theirs (an attacker sends images, and a search outside them
    found boundaries no image reaches); tabular rows have no such range here, so they are not bounded."""
    if data.kind != "image" or raw.dtype != torch.uint8:
        return None
    lo = data.inputs(torch.zeros_like(raw[:1])).flatten(1)[0]
    return lo, data.inputs(torch.full_like(raw[:1], 255)).flatten(1)[0]


def _clip(z: torch.Tensor, box: Box) -> torch.Tensor:
    return z if box is None else torch.maximum(torch.minimum(z, box[1]), box[0])


def _bisect(model: nn.Module, z0: torch.Tensor, adv: torch.Tensor, y: torch.Tensor,
            shape: torch.Size, opts: dict) -> torch.Tensor:
    """The misclassified end of a binary search on each segment ``[z0, adv]`` (``adv`` misclassified).

    Rows stop once the bracket is below ``tolerance / sqrt(d)`` of the
    distance: accurate enough that the gradient probes of HopSkipJump
    (``delta`` of the distance away) see the boundary, not the search error.
    """
    theta = opts["tolerance"] / math.sqrt(z0.shape[1])
    lo = torch.zeros(len(z0), device=z0.device)
    hi = torch.ones(len(z0), device=z0.device)
    for _ in range(_BISECT_STEPS):
        active = ((hi - lo) > theta * hi).nonzero().squeeze(1)
        if len(active) == 0:
            break
        mid = (lo[active] + hi[active]) / 2
        pts = torch.lerp(z0[active], adv[active], mid[:, None])
        flipped = _is_adversarial(model, pts, y[active], shape, opts["query_batch"])
        hi[active] = torch.where(flipped, mid, hi[active])
        lo[active] = torch.where(flipped, lo[active], mid)
    return torch.lerp(z0, adv, hi[:, None])


def _boundary_start(model: nn.Module, z0: torch.Tensor, y: torch.Tensor, shape: torch.Size,
                    gen: torch.Generator, opts: dict, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
    """A first boundary point per row, as HopSkipJump starts: random directions at doubling radii.

    At the first radius where some of the ``init_draws`` random directions
    are misclassified, each of those is binary-searched back to the boundary
    and the nearest boundary point is kept: the distance restricted to the
    boundary has a local minimum on every face of a class region, so the face
    the search starts on matters. Returns ``(points, found)``; rows never
    misclassified keep a point at the largest radius tried (clipped to the box) and ``found`` False.
    """
    n, d = z0.shape
    draws = opts["hsj_init_draws"]
    dev = z0.device
    hits = torch.zeros((n, draws), dtype=torch.bool, device=dev)
    cands = z0[:, None].repeat(1, draws, 1)
    radius = 0.1 * math.sqrt(d)
    for _ in range(opts["hsj_init_rounds"]):
        todo = (~hits.any(1)).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        u = torch.randn((len(todo), draws, d), generator=gen, device=dev)
        new = _clip(z0[todo, None] + radius * u / u.norm(dim=2, keepdim=True), box)
        h = _is_adversarial(model, new.flatten(0, 1), y[todo].repeat_interleave(draws),
                            shape, opts["query_batch"]).view(len(todo), draws)
        cands[todo], hits[todo] = new, h
        radius *= 2
    row, col = hits.nonzero(as_tuple=True)
    edge = _bisect(model, z0[row], cands[row, col], y[row], shape, opts)
    dist = torch.full((n, draws), float("inf"), device=dev)
    dist[row, col] = (edge - z0[row]).norm(dim=1)
    cands[row, col] = edge
    return cands[torch.arange(n, device=dev), dist.argmin(1)], hits.any(1)


def _boundary_blackbox(model: nn.Module, data: Dataset, raw: torch.Tensor, y: torch.Tensor,
                       gen: torch.Generator, opts: dict) -> torch.Tensor:
    """L2 distance to the decision boundary from labels only: HopSkipJump (Chen et al. 2020), batched.

    From a random misclassified start and a binary search to the boundary,
    each step estimates the boundary normal from the labels of ``B_t`` probes
    ``delta`` around the boundary point (a baseline-corrected Monte-Carlo
    average of the probe directions), moves along it by a geometrically shrunk
    step that stays misclassified, and searches back towards the sample. The
    distance is the smallest seen (each is that of a misclassified point, so an
    upper bound on the true one). A correctly classified sample costs about
    600 label queries with the defaults (measured on digits and
    purchase-synth: 8 x 2-3 radii, ~15 per binary search, 431 probes over
    the 6 gradient estimates), never more than ``1 + init_rounds x init_draws
    + init_draws x 30 + steps x 40 + sum_t B_0 sqrt(t)`` (~1000); a
    misclassified one costs 1 query and gets 0. Rows never found
    misclassified get the distance of that farthest point (the largest radius, clipped to the box).
    """
    z0 = data.inputs(raw)
    shape = z0.shape[1:]
    z0 = z0.flatten(1)
    box = _input_box(data, raw)
    dist = torch.zeros(len(z0), device=z0.device)
    live = (~_is_adversarial(model, z0, y, shape, opts["query_batch"])).nonzero().squeeze(1)
    if len(live) == 0:
        return dist
    z0, y = z0[live], y[live]
    point, found = _boundary_start(model, z0, y, shape, gen, opts, box)
    best = (point - z0).norm(dim=1)
    search = found.nonzero().squeeze(1)
    z0, y, point = z0[search], y[search], point[search]
    for t in range(1, opts["hsj_steps"] + 1):
        if len(z0) == 0:
            break
        current = (point - z0).norm(dim=1)
        normal = _hsj_normal(model, point, y, shape, opts["delta"] * current,
                             int(opts["hsj_grad_queries"] * math.sqrt(t)), gen, opts["query_batch"], box)
        moved, ok = _hsj_step(model, point, normal, current / math.sqrt(t), y, shape, opts["query_batch"], box)
        ok = ok.nonzero().squeeze(1)
        point[ok] = _bisect(model, z0[ok], moved[ok], y[ok], shape, opts)
        best[search] = torch.minimum(best[search], (point - z0).norm(dim=1))
    dist[live] = best
    return dist


def _hsj_normal(model: nn.Module, point: torch.Tensor, y: torch.Tensor, shape: torch.Size,
                delta: torch.Tensor, probes: int, gen: torch.Generator, query_batch: int, box: Box) -> torch.Tensor:
    """Unit estimate of the boundary normal at ``point`` (towards misclassification), labels only.

    HopSkipJump's estimator: ``sum_b (phi_b - mean phi) u_b`` over unit
    directions ``u_b``, ``phi_b = +1`` where ``point + delta u_b`` is
    misclassified, else -1; the baseline removes the bias of a point a little
    off the boundary. If all probes agree, their mean direction times the sign.
    """
    d = point.shape[1]
    out = []
    for rows in torch.arange(len(point), device=point.device).split(max(1, query_batch // probes)):
        u = torch.randn((len(rows), probes, d), generator=gen, device=point.device)
        u = u / u.norm(dim=2, keepdim=True)
        probe = _clip(point[rows, None] + delta[rows, None, None] * u, box)
        phi = _is_adversarial(model, probe.flatten(0, 1), y[rows].repeat_interleave(probes), shape,
                              query_batch).view(len(rows), probes).float() * 2 - 1
        mean = phi.mean(1, keepdim=True)
        weights = torch.where(mean.abs() == 1, mean, phi - mean)
        out.append((weights[:, :, None] * u).mean(1))
    g = torch.cat(out)
    return g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _hsj_step(model: nn.Module, point: torch.Tensor, normal: torch.Tensor, size: torch.Tensor,
              y: torch.Tensor, shape: torch.Size, query_batch: int, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
    """``point + xi * normal`` with ``xi`` halved from ``size`` until misclassified; ``ok`` where found."""
    moved = point.clone()
    ok = torch.zeros(len(point), dtype=torch.bool, device=point.device)
    xi = size.clone()
    for _ in range(_HSJ_HALVINGS):
        todo = (~ok).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        cand = _clip(point[todo] + xi[todo, None] * normal[todo], box)
        hit = _is_adversarial(model, cand, y[todo], shape, query_batch)
        moved[todo[hit]] = cand[hit]
        ok[todo[hit]] = True
        xi[todo[~hit]] /= 2
    return moved, ok


def _boundary_whitebox(model: nn.Module, data: Dataset, raw: torch.Tensor, y: torch.Tensor,
                       gen: torch.Generator, opts: dict) -> torch.Tensor:
    """L2 distance to the decision boundary with gradients: DeepFool-style linearization, batched.

    A white-box stand-in for the Carlini-Wagner search of Choquette-Choo et
    al. and Li & Zhang (Moosavi-Dezfooli et al., CVPR 2016): each step
    linearizes ``f_c - f_y`` for the ``wb_candidates`` most competitive classes
    c and jumps (with a small overshoot) to the nearest linearized boundary;
    rows stop once misclassified. A binary search on the segment from the
    sample then removes the overshoot. Samples still correct after
    ``wb_steps`` steps keep the length of their last step sum; misclassified
    samples get 0. Needs a model whose outputs are differentiable.
    """
    z0 = data.inputs(raw)
    shape = z0.shape[1:]
    box = _input_box(data, raw)
    z = z0.clone()
    active = ~_is_adversarial(model, z0.flatten(1), y, shape, opts["query_batch"])
    initially = active.clone()
    for _ in range(opts["wb_steps"]):
        rows = active.nonzero().squeeze(1)
        if len(rows) == 0:
            break
        z[rows] = _clip((z[rows] + _deepfool_step(model, z[rows], y[rows], opts)).flatten(1), box).view_as(z[rows])
        active[rows] = ~_is_adversarial(model, z[rows].flatten(1), y[rows], shape, opts["query_batch"])
    z0f, zf = z0.flatten(1), z.flatten(1)
    dist = torch.zeros(len(z0), device=z0.device)
    done = (initially & ~active).nonzero().squeeze(1)
    if len(done):
        edge = _bisect(model, z0f[done], zf[done], y[done], shape, opts)
        dist[done] = (edge - z0f[done]).norm(dim=1)
    stuck = (initially & active).nonzero().squeeze(1)
    dist[stuck] = (zf[stuck] - z0f[stuck]).norm(dim=1)
    return dist


def _deepfool_step(model: nn.Module, z: torch.Tensor, y: torch.Tensor, opts: dict) -> torch.Tensor:
    """One batched DeepFool step: ``(1 + overshoot) (|f_c| + eps) / ||w_c||^2 w_c`` for the nearest c."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        logits = model(z)
        if not logits.requires_grad:
            raise MiaError("boundary-wb needs a differentiable model; use the black-box "
                           "'boundary' signal for a model that releases labels or rounded outputs")
        margin = logits - logits.gather(1, y[:, None])  # f_c - f_y: negative while correct
        k = min(opts["wb_candidates"], logits.shape[1] - 1)
        cand = margin.scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices
        f = margin.gather(1, cand)
        grads = torch.stack([torch.autograd.grad(f[:, j].sum(), z, retain_graph=j < k - 1)[0]
                             for j in range(k)], dim=1).flatten(2)  # N x k x D
    f = f.detach()
    norm = grads.norm(dim=2).clamp_min(1e-12)
    nearest = (f.abs() / norm).argmin(1)
    rows = torch.arange(len(z), device=z.device)
    w, fc, wn = grads[rows, nearest], f[rows, nearest], norm[rows, nearest]
    step = ((fc.abs() + 1e-4) / wn ** 2)[:, None] * w
    return ((1 + opts["wb_overshoot"]) * step).view_as(z)


_LABEL_ONLY_FNS = {"aug": _aug_fraction, "boundary": _boundary_blackbox,
                   "boundary-wb": _boundary_whitebox, "noise-flip": _noise_flip_fraction}
