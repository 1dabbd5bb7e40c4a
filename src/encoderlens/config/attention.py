"""Norm, position and attention settings of a transformer block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NormKind = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
AttentionKind = Literal["standard", "disentangled", "gated_relative"]

#: Activation functions understood by :func:`encoderlens.components.mlp.get_activation`.
ACTIVATIONS = (
    "gelu",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
)


@dataclass(frozen=True)
class NormConfig:
    """A normalisation layer.

    Attributes:
        kind: ``"layernorm"`` (mean-subtracted, with optional bias) or ``"rmsnorm"`` (T5 style:
            no mean subtraction, no bias).
        eps: Added to the variance before the square root.
        bias: Whether a layernorm has an additive bias.
    """

    kind: NormKind = "layernorm"
    eps: float = 1e-12
    bias: bool = True


@dataclass(frozen=True)
class RelativePositionConfig:
    """T5-style bucketed relative position bias.

    Attributes:
        num_buckets: Number of buckets (half per direction when bidirectional).
        max_distance: Distances at or beyond this share the last bucket.
        bidirectional: True in encoders (past and future get separate buckets); False in a causal
            decoder, where only the past is bucketed.
    """

    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True


@dataclass(frozen=True)
class RotaryConfig:
    """Rotary position embedding (RoPE) applied to queries and keys, GPT-NeoX "rotate half" layout.

    Attributes:
        base: The rotary base (``rope_theta``).
        dim: Number of leading dimensions of each head that are rotated (None: the whole head).
    """

    base: float
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.base <= 0:
            raise ValueError(f"rotary base must be > 0, got {self.base}")
        if self.dim is not None and (self.dim < 2 or self.dim % 2):
            raise ValueError(f"rotary dim must be an even number >= 2 (or None for the whole head), got {self.dim}")


@dataclass(frozen=True)
class DisentangledConfig:
    """DeBERTa-v2/v3 disentangled relative attention.

    Scores are ``c2c + c2p + p2c``: content-to-content ``q_i . k_j``, content-to-position
    ``q_i . P_k[d(i, j)]`` and position-to-content ``k_j . P_q[d(i, j)]``, where ``P_q``/``P_k`` are
    projections of a shared table of ``2 * att_span`` relative embeddings and ``d(i, j)`` is the
    (bucketed, clamped) relative distance ``i - j`` shifted by ``att_span``.

    Attributes:
        att_span: Relative distances per direction; the table has ``2 * att_span`` rows.
        position_buckets: Log-bucketing of distances (0: no bucketing, distances clamped).
        max_relative_positions: Largest distance the log buckets are scaled to.
        c2p: Whether the content-to-position term is used.
        p2c: Whether the position-to-content term is used.
        share_att_key: Project relative embeddings with the content ``W_Q``/``W_K`` (v3) instead of
            separate position projections.
        norm: Norm applied to the relative embedding table, or None.
    """

    att_span: int
    position_buckets: int = 0
    max_relative_positions: int = 512
    c2p: bool = True
    p2c: bool = True
    share_att_key: bool = False
    norm: NormConfig | None = None

    def __post_init__(self) -> None:
        if self.att_span < 1:
            raise ValueError(f"att_span must be >= 1, got {self.att_span}")
        if self.position_buckets < 0:
            raise ValueError(f"position_buckets must be >= 0 (0: no bucketing), got {self.position_buckets}")
        if self.max_relative_positions < 1:
            raise ValueError(f"max_relative_positions must be >= 1, got {self.max_relative_positions}")
        if not (self.c2p or self.p2c):
            raise ValueError("disentangled attention needs c2p, p2c or both; use kind='standard' for neither")


@dataclass(frozen=True)
class AttentionConfig:
    """Multi-head attention.

    Attributes:
        n_heads: Number of heads.
        d_head: Size of each head.
        causal: Whether a query may only attend to itself and earlier keys.
        qkv_bias: Whether Q, K and V projections have biases.
        out_bias: Whether the output projection has a bias.
        scale: Multiplier applied to ``q @ k``. ``None`` means ``d_head ** -0.5``; T5 folds the
            scale into its weights and uses ``1.0``.
        rotary: Rotary position embedding of q and k (ModernBERT), or None.
        local_window: Sliding-window attention: a query sees only keys at distance ``<= local_window``
            (ModernBERT local layers: ``local_attention // 2``). None: no window.
        kind: ``"standard"`` (:class:`~encoderlens.components.attention.Attention`),
            ``"disentangled"`` (DeBERTa, needs ``disentangled``) or ``"gated_relative"`` (WavLM: the stack's
            ``relative_position`` bias gated per head and query,
            :class:`~encoderlens.components.attention_gated.GatedRelativeAttention`).
        disentangled: Settings of disentangled attention when ``kind="disentangled"``.
    """

    n_heads: int
    d_head: int
    causal: bool = False
    qkv_bias: bool = True
    out_bias: bool = True
    scale: float | None = None
    rotary: RotaryConfig | None = None
    local_window: int | None = None
    kind: AttentionKind = "standard"
    disentangled: DisentangledConfig | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("standard", "disentangled", "gated_relative"):
            raise ValueError(
                f"attention kind must be 'standard', 'disentangled' or 'gated_relative', got {self.kind!r}"
            )
        if (self.kind == "disentangled") != (self.disentangled is not None):
            raise ValueError(
                f"kind={self.kind!r} with disentangled={self.disentangled!r}: "
                "kind='disentangled' needs a DisentangledConfig, and only it takes one"
            )
        if self.local_window is not None and self.local_window < 0:
            raise ValueError(f"local_window must be >= 0 (or None for no window), got {self.local_window}")
        if self.rotary is not None and self.rotary.dim is not None and self.rotary.dim > self.d_head:
            raise ValueError(f"rotary dim {self.rotary.dim} exceeds d_head {self.d_head}")

    @property
    def attn_scale(self) -> float:
        return self.d_head**-0.5 if self.scale is None else self.scale
