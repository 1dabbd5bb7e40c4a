"""Heads of speech encoders: the linear CTC head and the wav2vec2 pre-training quantizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.components.vocab_projection import vocab_projection
from encoderlens.config import CTCHeadConfig, QuantizerConfig
from encoderlens.hooks import HookPoint


class CTCHead(nn.Module):
    """``logits = resid_final @ W_U + b_U`` (HF ``lm_head``). Linear, so ``logit_attrs`` applies."""

    def __init__(self, d_model: int, cfg: CTCHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_U = nn.Parameter(torch.empty(d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))

    def forward(self, x: Float[Tensor, "batch frames d_model"]) -> Float[Tensor, "batch frames d_vocab"]:
        return vocab_projection(x, self.W_U, self.b_U)


@dataclass
class QuantizerOutput:
    """What the wav2vec2 pre-training head computes (HF ``Wav2Vec2ForPreTraining`` in eval mode).

    Attributes:
        projected_states: ``project_hid(final hidden state)`` (HF ``projected_states``).
        projected_quantized_states: ``project_q(quantized features)`` (HF ``projected_quantized_states``).
        quantized: The codevectors picked for each frame, concatenated over groups (before ``project_q``).
        codevector_ids: The entry picked in each codebook, ``(batch, frames, group)``.
        codevector_perplexity: Perplexity of the code usage over every frame of the batch (HF's value,
            padding frames included as HF includes them when no ``mask_time_indices`` is given).
    """

    projected_states: Float[Tensor, "batch frames d_proj"]
    projected_quantized_states: Float[Tensor, "batch frames d_proj"]
    quantized: Float[Tensor, "batch frames d_code"]
    codevector_ids: Int[Tensor, "batch frames group"]
    codevector_perplexity: Float[Tensor, ""]


class QuantizerHead(nn.Module):
    """wav2vec2 product quantizer (eval mode: hard argmax, no Gumbel noise) plus ``project_hid`` / ``project_q``.

    ``code_logits = features_normed @ W_code + b_code`` per group; each group picks its argmax entry of
    ``codevectors[group]``; the picks are concatenated. Both the final hidden state and the quantized
    vector are projected to ``proj_codevector_dim`` for the contrastive similarity.

    Hooks: ``hook_code_logits`` ``(batch, frames, group, entry)``, ``hook_quantized`` ``(batch, frames,
    codevector_dim)``, ``hook_projected_states`` and ``hook_projected_quantized`` ``(batch, frames, d_proj)``.
    The argmax has no gradient (as in HF eval mode).
    """

    def __init__(self, d_model: int, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g, v = cfg.num_groups, cfg.num_vars
        self.codevectors = nn.Parameter(torch.empty(g, v, cfg.codevector_dim // g))
        self.W_code = nn.Parameter(torch.empty(cfg.d_features, g * v))
        self.b_code = nn.Parameter(torch.zeros(g * v))
        self.W_hid = nn.Parameter(torch.empty(d_model, cfg.proj_codevector_dim))
        self.b_hid = nn.Parameter(torch.zeros(cfg.proj_codevector_dim))
        self.W_q = nn.Parameter(torch.empty(cfg.codevector_dim, cfg.proj_codevector_dim))
        self.b_q = nn.Parameter(torch.zeros(cfg.proj_codevector_dim))
        self.hook_code_logits = HookPoint()
        self.hook_quantized = HookPoint()
        self.hook_projected_states = HookPoint()
        self.hook_projected_quantized = HookPoint()

    def forward(
        self,
        features_normed: Float[Tensor, "batch frames channels"],
        final_hidden: Float[Tensor, "batch frames d_model"],
    ) -> QuantizerOutput:
        g, v = self.cfg.num_groups, self.cfg.num_vars
        b, t, _ = features_normed.shape
        logits = (features_normed @ self.W_code + self.b_code).view(b, t, g, v)
        logits = self.hook_code_logits(logits)
        ids = logits.argmax(-1)
        group = torch.arange(g, device=ids.device).expand_as(ids)
        quantized = self.hook_quantized(self.codevectors[group, ids].reshape(b, t, -1))
        one_hot = torch.nn.functional.one_hot(ids, v).to(logits.dtype).view(b * t, g, v)
        marginal = one_hot.mean(0)
        perplexity = torch.exp(-torch.xlogy(marginal, marginal).sum(-1)).sum()
        return QuantizerOutput(
            projected_states=self.hook_projected_states(final_hidden @ self.W_hid + self.b_hid),
            projected_quantized_states=self.hook_projected_quantized(quantized @ self.W_q + self.b_q),
            quantized=quantized,
            codevector_ids=ids,
            codevector_perplexity=perplexity,
        )
