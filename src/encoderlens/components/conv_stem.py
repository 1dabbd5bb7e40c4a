"""Whisper's two-conv stem: log-mel frames -> encoder frames at half the rate.

``x1 = gelu(conv1d(mel, W1, b1, kernel 3, padding 1))``, ``x2 = gelu(conv1d(x1, W2, b2, kernel 3, stride 2,
padding 1))`` (exact, erf GELU). Hooks ``hook_conv1`` ``(batch, mel_frames, d_model)`` and ``hook_conv2``
``(batch, frames, d_model)``: time first, as every other activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.hooks import HookPoint


class ConvStem(nn.Module):
    """Weights ``W1: (d_model, n_mels, 3)``, ``W2: (d_model, d_model, 3)`` (PyTorch ``Conv1d`` layout)."""

    def __init__(self, n_mels: int, d_model: int) -> None:
        super().__init__()
        self.W1 = nn.Parameter(torch.empty(d_model, n_mels, 3))
        self.b1 = nn.Parameter(torch.zeros(d_model))
        self.W2 = nn.Parameter(torch.empty(d_model, d_model, 3))
        self.b2 = nn.Parameter(torch.zeros(d_model))
        self.hook_conv1 = HookPoint()
        self.hook_conv2 = HookPoint()

    def forward(self, mel: Float[Tensor, "batch mel_frames n_mels"]) -> Float[Tensor, "batch frames d_model"]:
        x = F.gelu(F.conv1d(mel.transpose(1, 2), self.W1, self.b1, padding=1))
        x = self.hook_conv1(x.transpose(1, 2)).transpose(1, 2)
        x = F.gelu(F.conv1d(x, self.W2, self.b2, stride=2, padding=1))
        return self.hook_conv2(x.transpose(1, 2))
