"""Random crop (with zero padding) and horizontal flip for a whole batch on its device.

Per-sample torchvision transforms cost a Python call per image and keep the
data on the host; here one ``randint`` draws every offset and one gather
builds the batch, on whatever device the batch lives (uint8 or float). The
semantics match ``RandomCrop(size, padding)`` followed by
``RandomHorizontalFlip()`` with zero fill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PADDING = 4
"""Pixels of zero padding around a crop: CIFAR's ``RandomCrop(32, padding=4)``."""


def crop_flip(x: torch.Tensor, padding: int = PADDING, flip: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of ``x`` (``N x C x H x W``) shifted by up to ``padding`` pixels and flipped with p=1/2.

    A crop is the ``H x W`` window at a random offset in ``[0, 2 * padding]``
    of the zero-padded image. ``generator`` (on ``x.device``) makes the draws
    reproducible; without it the global RNG is used. The result has ``x``'s
    dtype and shape and is laid out channels-last in memory (the gather moves
    whole pixels), which CUDA convolutions prefer; ``.contiguous()`` gives NCHW.
    """
    if x.dim() != 4:
        raise ValueError(f"crop_flip expects N x C x H x W, got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, dev = len(x), x.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flipped = (torch.randint(0, 2, (n,), generator=generator, device=dev).bool() if flip
               else torch.zeros(n, dtype=torch.bool, device=dev))
    return crop_flip_at(x, dy, dx, flipped, padding)


def crop_flip_at(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flipped: torch.Tensor,
                 padding: int = PADDING) -> torch.Tensor:
    """:func:`crop_flip` with given offsets (each in ``[0, 2 * padding]``) and flips, one per image.

    The caller draws them, so that models trained together each draw theirs
    from their own generator (:func:`mia.train.train_many`); the gather is
    one indexing of the padded pixels on the device.
    """
    n, _, h, w = x.shape
    dev = x.device
    pixels = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)  # N x H+2p x W+2p x C
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flipped[:, None], w - 1 - cols, cols) + dx[:, None]  # N x W
    rows = dy[:, None] + torch.arange(h, device=dev)  # N x H
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    return pixels[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def shift_flip(x: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """``x`` translated by (``dy``, ``dx``) pixels with zero fill, then flipped if ``flip``.

    The deterministic counterpart of :func:`crop_flip`, for querying fixed
    augmented views (LiRA averages its test over them).
    """
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p,) * 4) if p else x
    out = padded[..., p - dy:p - dy + h, p - dx:p - dx + w]
    return out.flip(-1) if flip else out


def query_views(augment: bool, shift: int = 4) -> list[tuple[int, int, bool]]:
    """The fixed (dy, dx, flip) views a model is queried on; view 0 is the plain input.

    Data trained with crop+flip is queried on 2 flips x 9 shifts in
    {-shift, 0, shift}^2 = 18 views, as LiRA does; other data on the input alone.
    """
    if not augment:
        return [(0, 0, False)]
    shifts = [(dy, dx) for dy in (0, -shift, shift) for dx in (0, -shift, shift)]
    return [(dy, dx, flip) for flip in (False, True) for dy, dx in shifts]
