"""MLP and block-stack settings, and the dims shared by single-stack models."""

from __future__ import annotations

from dataclasses import dataclass

from encoderlens.config.attention import ACTIVATIONS, AttentionConfig, NormConfig, NormPosition, RelativePositionConfig


@dataclass(frozen=True)
class MLPConfig:
    """Position-wise feed-forward block.

    Attributes:
        d_mlp: Hidden size.
        act_fn: Activation name (see :data:`ACTIVATIONS`).
        gated: Gated-linear-unit MLP (``act(x W_gate) * (x W_in)``) as in T5 v1.1 / Flan-T5.
        bias: Whether the linear layers have biases.
        out_float32_in_fp16: Keep ``W_out`` in float32 when the model is loaded in float16 (T5: HF's
            ``_keep_in_fp32_modules = ["wo"]``, without which T5's residual stream overflows float16).
            ``hook_post`` is cast to float32 before ``W_out``, so the MLP output and the residual
            stream after it are float32, exactly as in HF.
    """

    d_mlp: int
    act_fn: str
    gated: bool = False
    bias: bool = True
    out_float32_in_fp16: bool = False

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


class _SingleStackDims:
    """``d_model``, ``n_layers``, ``n_heads``, ``d_head`` of a model with one block stack (``self.stack``)."""

    stack: StackConfig

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
