"""Batched inference on a device-resident dataset."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mia.data.base import Dataset


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset, idx: np.ndarray | torch.Tensor,
                   batch_size: int = 1024, device: str | torch.device = "auto") -> torch.Tensor:
    """Float32 logits of ``model`` on rows ``idx`` of ``data``, in eval mode, on the CPU.

    On CUDA the forward runs under bf16 autocast; logits come back as float32
    so that log-probabilities of confident predictions keep their precision.
    """
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    out = []
    for start in range(0, len(idx), batch_size):
        rows = idx[start:start + batch_size].to(data.x.device)
        xb = data.inputs(data.x[rows].to(device, non_blocking=True))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(xb).float().cpu())
    model.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)
