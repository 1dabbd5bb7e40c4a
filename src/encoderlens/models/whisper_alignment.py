"""Token timestamps from Whisper's cross-attention alignment heads (median filter + DTW), as HF / OpenAI.

The cross-attention patterns of ``generation_config.alignment_heads`` (decoder token x encoder position,
one position = 0.02 s) are normalised over the tokens, median-filtered over time, averaged over the
heads, and aligned monotonically with dynamic time warping; each token's time is the audio position
where the path first reaches it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from torch.nn import functional as F

#: Seconds per encoder position.
TIME_PRECISION = 0.02


def median_filter(x: Float[Tensor, "... time"], width: int) -> Float[Tensor, "... time"]:
    """Median over a sliding window of odd ``width`` along the last axis (reflect-padded edges)."""
    if width <= 0 or width % 2 != 1:
        raise ValueError(f"median_filter_width must be a positive odd number, got {width}")
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    shape = x.shape
    flat = F.pad(x.reshape(-1, 1, shape[-1]), (pad, pad), mode="reflect").reshape(*shape[:-1], -1)
    return flat.unfold(-1, width, 1).sort()[0][..., pad]


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotone alignment of ``cost`` (tokens x time): the (token, time) indices of the cheapest path."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = -np.ones((n + 1, m + 1), dtype=np.float32)
    acc[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            acc[i, j] = cost[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :] = 2
    trace[:, 0] = 1
    text, time = [], []
    while i > 0 or j > 0:
        text.append(i - 1)
        time.append(j - 1)
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(text)[::-1], np.array(time)[::-1]


def token_times(
    weights: Float[Tensor, "batch heads tokens time"],
    num_input_ids: int,
    median_width: int,
    num_frames: Sequence[int] | None = None,
) -> Float[Tensor, "batch total"]:
    """Per-token times in seconds from alignment-head patterns (HF's ``_extract_token_timestamps``).

    Args:
        weights: Cross-attention patterns of the alignment heads for decoder inputs ``tokens[:, :-1]``.
        num_input_ids: Prompt length (its tokens get time 0).
        median_width: Median filter width.
        num_frames: Mel frames of real audio per row (patterns are cropped to half of it); None: all.

    Returns:
        ``(batch, num_input_ids + generated)`` times; the last token repeats the previous time.
    """
    batch = weights.shape[0]
    out = torch.zeros(batch, weights.shape[2] + 1, dtype=torch.float32)
    weights = weights[:, :, num_input_ids:, :]
    if weights.shape[2] == 0:
        return out
    for b in range(batch):
        m = weights[b] if num_frames is None else weights[b, ..., : int(num_frames[b]) // 2]
        m = (m - m.mean(dim=-2, keepdim=True)) / m.std(dim=-2, keepdim=True, unbiased=False)
        m = median_filter(m, median_width).mean(dim=0)
        text, time = dtw(-m.cpu().double().numpy())
        jumps = np.pad(np.diff(text), (1, 0), constant_values=1).astype(bool)
        jump_times = time[jumps] * TIME_PRECISION
        out[b] = torch.cat([torch.zeros(num_input_ids), torch.tensor(jump_times), torch.tensor([jump_times[-1]])])
    return out
