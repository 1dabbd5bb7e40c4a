"""Typed, frozen configuration dataclasses.

Behaviour is described here (``causal``, ``norm_position``, ``gated``...) and nowhere else: components
read these fields, never model names. Converters in :mod:`encoderlens.convert` build these from a
Hugging Face config and reject settings they do not handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NormKind = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
AttentionKind = Literal["standard", "disentangled"]

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
        kind: ``"standard"`` (:class:`~encoderlens.components.attention.Attention`) or
            ``"disentangled"`` (DeBERTa, needs ``disentangled``).
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
        if self.kind not in ("standard", "disentangled"):
            raise ValueError(f"attention kind must be 'standard' or 'disentangled', got {self.kind!r}")
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


@dataclass(frozen=True)
class MLPConfig:
    """Position-wise feed-forward block.

    Attributes:
        d_mlp: Hidden size.
        act_fn: Activation name (see :data:`ACTIVATIONS`).
        gated: Gated-linear-unit MLP (``act(x W_gate) * (x W_in)``) as in T5 v1.1 / Flan-T5.
        bias: Whether the linear layers have biases.
    """

    d_mlp: int
    act_fn: str
    gated: bool = False
    bias: bool = True

    def __post_init__(self) -> None:
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.act_fn!r}; expected one of {ACTIVATIONS}")


@dataclass(frozen=True)
class StackConfig:
    """A stack of identical transformer blocks.

    Attributes:
        n_layers: Number of blocks.
        d_model: Residual stream width.
        attn: Self-attention settings.
        mlp: MLP settings.
        norm: Settings of every norm inside the blocks (and the final norm).
        norm_position: ``"post"`` (BERT, wav2vec2-base: ``x = LN(x + f(x))``) or ``"pre"``
            (T5, wav2vec2-large: ``x = x + f(LN(x))``).
        cross_attention: Whether each block attends to an encoder output (decoders).
        final_norm: Whether a norm follows the last block.
        relative_position: T5 relative position bias (computed once, shared by all blocks).
        layer_attn: Per-block attention settings (one per block; ModernBERT alternates local and
            global layers). None: every block uses ``attn``. Heads and head size must match ``attn``.
        first_block_attn_norm: False when block 0 has no norm before its attention (pre-LN only;
            ModernBERT, where the embedding norm plays that role).
    """

    n_layers: int
    d_model: int
    attn: AttentionConfig
    mlp: MLPConfig
    norm: NormConfig
    norm_position: NormPosition
    cross_attention: bool = False
    final_norm: bool = False
    relative_position: RelativePositionConfig | None = None
    layer_attn: tuple[AttentionConfig, ...] | None = None
    first_block_attn_norm: bool = True

    def __post_init__(self) -> None:
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        if self.layer_attn is not None:
            if len(self.layer_attn) != self.n_layers:
                raise ValueError(
                    f"layer_attn has {len(self.layer_attn)} entries; expected one per block ({self.n_layers})"
                )
            for i, a in enumerate(self.layer_attn):
                if (a.n_heads, a.d_head, a.kind) != (self.attn.n_heads, self.attn.d_head, self.attn.kind):
                    raise ValueError(
                        f"layer_attn[{i}] has n_heads={a.n_heads}, d_head={a.d_head}, kind={a.kind!r}; "
                        f"every block must match attn ({self.attn.n_heads}, {self.attn.d_head}, {self.attn.kind!r})"
                    )
        if not self.first_block_attn_norm and self.norm_position != "pre":
            raise ValueError("first_block_attn_norm=False is only meaningful in a pre-LN stack (norm_position='pre')")

    def attn_for(self, layer: int) -> AttentionConfig:
        """Attention settings of block ``layer``."""
        return self.attn if self.layer_attn is None else self.layer_attn[layer]

    @property
    def n_heads(self) -> int:
        return self.attn.n_heads

    @property
    def d_head(self) -> int:
        return self.attn.d_head


@dataclass(frozen=True)
class EmbeddingConfig:
    """Token, position and token-type embeddings.

    Attributes:
        d_vocab: Vocabulary size.
        n_ctx: Number of learned absolute positions (0: no learned positions).
        n_token_types: Number of token types / segments (0: none).
        position_offset: Added to position indices before lookup (RoBERTa, BART).
        norm: Norm applied to the summed embedding (BERT), or None.
        scale: Multiplier on token embeddings (BART with ``scale_embedding``).
        pad_token_id: Padding token id, if the tokenizer has one.
        zero_padding: Multiply the (normalised) embedding by the attention mask, so padded
            positions enter block 0 as zeros (DeBERTa).
    """

    d_vocab: int
    n_ctx: int = 0
    n_token_types: int = 0
    position_offset: int = 0
    norm: NormConfig | None = None
    scale: float = 1.0
    pad_token_id: int | None = None
    zero_padding: bool = False


@dataclass(frozen=True)
class MLMHeadConfig:
    """BERT-style masked-language-model head: dense -> act -> norm -> unembed.

    Attributes:
        act_fn: Activation of the transform.
        norm: Norm after the transform.
        tied: Whether the unembedding shares weights with the token embedding.
    """

    act_fn: str
    norm: NormConfig
    tied: bool = True


@dataclass(frozen=True)
class EncoderConfig:
    """A bidirectional text encoder (BERT family).

    Attributes:
        architecture: The HF architecture the checkpoint came from (informational only).
        model_type: The HF ``model_type`` (informational only).
        embed: Embedding settings.
        stack: Block stack settings.
        mlm_head: Masked-LM head, if the checkpoint has one.
        pooler: Whether a tanh pooler over the first token exists.
        nsp_head: Whether a next-sentence-prediction classifier exists (needs the pooler).
    """

    architecture: str
    model_type: str
    embed: EmbeddingConfig
    stack: StackConfig
    mlm_head: MLMHeadConfig | None = None
    pooler: bool = False
    nsp_head: bool = False

    family = "encoder"

    @property
    def d_model(self) -> int:
        return self.stack.d_model

    @property
    def n_layers(self) -> int:
        return self.stack.n_layers

    @property
    def n_heads(self) -> int:
        return self.stack.attn.n_heads

    @property
    def d_head(self) -> int:
        return self.stack.attn.d_head

    @property
    def d_vocab(self) -> int:
        return self.embed.d_vocab
