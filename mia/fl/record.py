"""What the honest-but-curious server computes on its fixed query set in a recorded round (FedMIA).

For the round's global model ``w`` (the weights every client started from)
and each upload ``u_k = w_local_k - w``, on query ``q`` with per-sample
gradient ``g_q = grad_w loss(w; q)`` and ``D_k = w - w_local_k = -u_k``:

* ``loss[k, q]``: the loss of client ``k``'s uploaded model ``w + u_k`` on ``q``;
* ``cos[k, q] = <g_q, D_k> / (|g_q| |D_k|)``;
* ``grad_diff[k, q] = |D_k|^2 - |D_k - g_q|^2 = 2 <g_q, D_k> - |g_q|^2``;
* ``grad_norm[q] = |g_q|^2``.

Per-sample gradients come from ``torch.func.vmap(torch.func.grad(...))`` in
chunks (``Q x P`` floats per chunk at most), and every inner product with
the uploads is one matrix product per chunk, so no ``Q x P`` matrix is ever
held whole. Clients that were not sampled get NaN (:class:`mia.fl.attacks.FLSignals`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from mia.fl.clients import Params, unflatten

CHUNK = 64  # queries per per-sample-gradient batch


@torch.no_grad()
def upload_losses(model: nn.Module, global_params: Params, buffers: Params, uploads: torch.Tensor,
                  x: torch.Tensor, y: torch.Tensor, client_buffers: list[Params] | None = None) -> torch.Tensor:
    """``K x Q`` cross-entropy of each uploaded model ``w + u_k`` on the queries, with the BatchNorm
    statistics client ``k`` uploaded (``client_buffers``) where there are any."""
    glob = torch.cat([p.reshape(-1) for p in global_params.values()])
    out = []
    for k, u in enumerate(uploads):
        params = unflatten(glob + u, global_params)
        logits = functional_call(model, {**params, **(client_buffers[k] if client_buffers else buffers)}, (x,))
        out.append(F.cross_entropy(logits.float(), y, reduction="none"))
    return torch.stack(out)


def gradient_signals(model: nn.Module, global_params: Params, buffers: Params, uploads: torch.Tensor,
                     x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cos K x Q, grad_diff K x Q, grad_norm Q)`` of the module docstring."""

    def loss(params: Params, xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**params, **buffers}, (xq.unsqueeze(0),))
        return F.cross_entropy(logits.float(), yq.unsqueeze(0))

    per_sample = _per_sample_gradients(loss)
    d = -uploads  # K x P: w_global - w_local
    d_norm = d.norm(dim=1)
    dots, norms = [], []
    params = {n: p.detach() for n, p in global_params.items()}
    for start in range(0, len(y), CHUNK):
        g = per_sample(params, x[start:start + CHUNK], y[start:start + CHUNK])
        flat = torch.cat([t.reshape(t.shape[0], -1) for t in g.values()], 1)  # chunk x P
        dots.append(d @ flat.T)
        norms.append((flat * flat).sum(1))
    dot, g2 = torch.cat(dots, 1), torch.cat(norms)
    cos = dot / (d_norm[:, None] * g2.sqrt()[None, :]).clamp_min(1e-30)
    return cos, 2 * dot - g2[None, :], g2


def _per_sample_gradients(loss):
    """``(params, xs, ys) -> {name: chunk x *shape}``: vmapped, or sample by sample for a model whose forward
    vmap refuses (a user's own that branches on its activations or calls ``.item()``, which crashed the
    recording with a vmap traceback; it trains one by one too, :func:`mia.train.many.vmap_runs`). Decided
    on the first chunk and kept."""
    vmapped = vmap(grad(loss), in_dims=(None, 0, 0))
    looped = grad(loss)
    use_vmap = [True]

    def one_by_one(params: Params, xs: torch.Tensor, ys: torch.Tensor) -> Params:
        grads = [looped(params, xq, yq) for xq, yq in zip(xs, ys)]
        return {n: torch.stack([g[n] for g in grads]) for n in params}

    def per_sample(params: Params, xs: torch.Tensor, ys: torch.Tensor) -> Params:
        if use_vmap[0]:
            try:
                return vmapped(params, xs, ys)
            except RuntimeError as exc:
                if "vmap" not in str(exc):
                    raise
                use_vmap[0] = False
        return one_by_one(params, xs, ys)

    return per_sample


def record_round(model: nn.Module, global_params: Params, buffers: Params, uploads: torch.Tensor,
                 x: torch.Tensor, y: torch.Tensor, client_buffers: list[Params] | None = None
                 ) -> dict[str, np.ndarray]:
    """All signals of one round for the sampled clients' ``uploads`` (``K x P``), as float32 numpy.

    ``buffers`` are the round's global BatchNorm statistics (the gradients are the global model's);
    ``client_buffers``, one per upload, those each client sent (its upload's loss)."""
    was_training = model.training
    model.eval()
    try:
        loss = upload_losses(model, global_params, buffers, uploads, x, y, client_buffers)
        cos, grad_diff, grad_norm = gradient_signals(model, global_params, buffers, uploads, x, y)
    finally:
        model.train(was_training)
    return {k: v.detach().float().cpu().numpy() for k, v in
            (("loss", loss), ("cos", cos), ("grad_diff", grad_diff), ("grad_norm", grad_norm))}
