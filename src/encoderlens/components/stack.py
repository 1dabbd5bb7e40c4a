"""The stack loop (run blocks in order, then the final norm), written once for every family, and
:class:`Stack`, one side (encoder or decoder) of an encoder-decoder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.components.attention import Attention, KVCache, build_additive_mask
from encoderlens.components.attention_deberta import RelativeEmbeddings
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.embed import Embed, PosEmbed
from encoderlens.components.norm import make_norm
from encoderlens.components.position import RelativePositionBias
from encoderlens.components.stack_weights import StackWeights, StackWeightsMixin
from encoderlens.config import EmbeddingConfig, StackConfig
from encoderlens.hooks import HookPoint, KeepPropertyErrors


def run_blocks(
    blocks: nn.ModuleList,
    x: Float[Tensor, "batch pos d_model"],
    *,
    additive_mask: Tensor | None,
    stop_at_layer: int | None = None,
    position_bias: Tensor | None = None,
    encoder_out: Float[Tensor, "batch enc_pos d_model"] | None = None,
    cross_mask: Tensor | None = None,
    kv_cache: list[tuple[KVCache, KVCache]] | None = None,
    rel_embeddings: RelativeEmbeddings | None = None,
    final_norm: nn.Module | None = None,
    final_norm_hook: HookPoint | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """Run ``blocks[:stop_at_layer]`` on the residual stream ``x``, then the final norm (full runs only).

    Every family's stack runs through here (text encoder, speech encoder, both sides of an
    encoder-decoder); each block's hooks fire as its own (``blocks.{i}.hook_resid_pre`` ...).

    Args:
        blocks: The :class:`~encoderlens.components.blocks.TransformerBlock` list.
        x: The input of block 0 (the embedding output).
        additive_mask: Self-attention mask, added to the scores (see ``build_additive_mask``).
        stop_at_layer: Run blocks ``[0, stop_at_layer)`` only, and skip the final norm.
        position_bias: Relative position bias added to every block's scores (T5).
        encoder_out: Encoder output, for blocks with cross-attention.
        cross_mask: Additive cross-attention mask.
        kv_cache: One ``(self, cross)`` cache pair per block (generation); updated in place.
        rel_embeddings: Disentangled-attention relative embeddings (DeBERTa), computed once per forward.
        final_norm: Norm applied after the last block (None: none).
        final_norm_hook: Hook point on the final norm's output (None: not hooked).
    """
    if stop_at_layer is not None:
        n = len(blocks)
        if isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int):
            raise TypeError(f"stop_at_layer must be an int (a block index) or None, got {stop_at_layer!r}")
        if not -n <= stop_at_layer <= n:
            raise ValueError(
                f"stop_at_layer={stop_at_layer} is out of range for {n} blocks: pass an int in [{-n}, {n}] "
                "(0: the embeddings, a negative value counts from the end) or None for a full run"
            )
    run = cast("Sequence[TransformerBlock]", blocks[:stop_at_layer])
    inputs_on = None  # the device the block inputs were last moved to (device_map placement)
    for i, block in enumerate(run):
        dev = block.entry_device  # None unless placed over several devices
        if dev is not None and (dev != inputs_on or x.device != dev):
            inputs_on = dev
            x, additive_mask, position_bias, encoder_out, cross_mask, rel_embeddings = to_block_device(
                dev, x, additive_mask, position_bias, encoder_out, cross_mask, rel_embeddings
            )
        x = block(
            x,
            additive_mask=additive_mask,
            position_bias=position_bias,
            encoder_hidden_states=encoder_out,
            cross_mask=cross_mask,
            kv_cache=kv_cache[i] if kv_cache is not None else None,
            rel_embeddings=rel_embeddings,
        )
    if stop_at_layer is None and final_norm is not None:
        x = final_norm(x)
        if final_norm_hook is not None:
            x = final_norm_hook(x)
    return x


def to_block_device(
    device: torch.device,
    x: Tensor,
    additive_mask: Tensor | None,
    position_bias: Tensor | None,
    encoder_out: Tensor | None,
    cross_mask: Tensor | None,
    rel_embeddings: RelativeEmbeddings | None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None, RelativeEmbeddings | None]:
    """Move a block's inputs to ``device`` (a block boundary between two devices of a ``device_map``).

    Each is checked on its own: the encoder output of a cross-attention may come from another device
    than the decoder's residual stream.
    """

    def to(t: Tensor | None) -> Tensor | None:
        return t if t is None or t.device == device else t.to(device)

    if rel_embeddings is not None and rel_embeddings.table.device != device:
        rel_embeddings = RelativeEmbeddings(
            rel_embeddings.table.to(device), rel_embeddings.c2p_index.to(device), rel_embeddings.p2c_index.to(device)
        )
    return (
        x if x.device == device else x.to(device),
        to(additive_mask),
        to(position_bias),
        to(encoder_out),
        to(cross_mask),
        rel_embeddings,
    )


class Stack(KeepPropertyErrors, StackWeightsMixin, nn.Module):
    """One side of an encoder-decoder: embeddings, position bias, blocks and final norm.

    The token embedding is the model's shared :class:`Embed`, held in a list so it is registered
    (and loaded) once, at the model root.

    Stacked weights: ``W_Q, W_K, W_V, W_O, b_*, QK, OV, W_in, W_gate, W_out`` over the self-attention
    and MLPs of this stack's blocks; :attr:`cross` gives the same over cross-attention (decoders).
    """

    def __init__(self, cfg: StackConfig, embed_cfg: EmbeddingConfig, embed: Embed) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_cfg = embed_cfg
        d = cfg.d_model
        self._embed = [embed]
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(d, embed_cfg) if embed_cfg.n_ctx else None
        self.hook_pos_embed = HookPoint() if self.pos_embed is not None else None
        self.embed_ln = make_norm(d, embed_cfg.norm) if embed_cfg.norm is not None else None
        self.hook_full_embed = HookPoint()
        rel = cfg.relative_position
        self.position_bias = RelativePositionBias(cfg.n_heads, rel) if rel is not None else None
        self.hook_position_bias = HookPoint() if self.position_bias is not None else None
        blocks = [TransformerBlock(cfg) for _ in range(cfg.n_layers)]
        if self.position_bias is not None and blocks and isinstance(blocks[0].attn, Attention):
            blocks[0].attn.attach_relative_position_bias(self.position_bias)
        self.blocks = nn.ModuleList(blocks)
        self.ln_final = make_norm(d, cfg.norm) if cfg.final_norm else None
        self.hook_final_norm = HookPoint() if self.ln_final is not None else None

    # TransformerLens's HookedEncoderDecoder keeps each side as a list of blocks: model.encoder[0]...
    def __getitem__(self, index: int | slice) -> nn.Module:
        """``stack[i]``: block ``i`` (``stack.blocks[i]``), as TransformerLens's ``model.encoder[i]``."""
        block: nn.Module = self.blocks[index]
        return block

    def __iter__(self) -> Iterator[nn.Module]:
        """The blocks in order (``for block in model.encoder``)."""
        return iter(self.blocks)

    def __len__(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    @property
    def cross(self) -> StackWeights:
        """Stacked cross-attention weights: ``decoder.cross.W_Q[layer, head]``, ``decoder.cross.OV``..."""
        if not self.cfg.cross_attention:
            raise AttributeError("this stack has no cross-attention (only the decoder has)")
        return StackWeights(self.blocks, "cross_attn")

    @property
    def d_vocab(self) -> int:
        """Rows of the token embedding this stack reads."""
        return self._embed[0].W_E.shape[0]

    @property
    def max_positions(self) -> int | None:
        """Longest input the learned position table allows (None: relative positions, no limit)."""
        return self.pos_embed.max_positions if self.pos_embed is not None else None

    def embed_input(self, tokens: Int[Tensor, "batch pos"], past_len: int = 0) -> Float[Tensor, "batch pos d_model"]:
        """Token (+ position) embedding and embedding norm: the input of block 0."""
        x = self.hook_embed(self._embed[0](tokens))
        if self.pos_embed is not None:
            assert self.hook_pos_embed is not None
            pos = torch.arange(past_len, past_len + tokens.shape[1], device=tokens.device)[None].expand_as(tokens)
            x = x + self.hook_pos_embed(self.pos_embed(pos))
        if self.embed_ln is not None:
            x = self.embed_ln(x)
        return self.hook_full_embed(x)

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        key_mask: Int[Tensor, "batch key_pos"],
        encoder_out: Float[Tensor, "batch enc_pos d_model"] | None = None,
        encoder_mask: Int[Tensor, "batch enc_pos"] | None = None,
        kv_cache: list[tuple[KVCache, KVCache]] | None = None,
        past_len: int = 0,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Run the stack on ``tokens`` (the new positions when ``past_len > 0``).

        Args:
            tokens: Token ids of the positions to compute.
            key_mask: 1 = attend, over all self-attention keys (``past_len + pos``).
            encoder_out: Encoder output (decoders).
            encoder_mask: 1 = real encoder position (decoders).
            kv_cache: One ``(self, cross)`` cache pair per block (generation); updated in place.
            past_len: Number of positions already in ``kv_cache``.
        """
        x = self.embed_input(tokens, past_len)
        q_len = x.shape[1]
        k_len = past_len + q_len
        mask = build_additive_mask(key_mask.bool(), q_len, k_len, self.cfg.attn.causal, x.dtype, x.device, past_len)
        bias = None
        if self.position_bias is not None:
            assert self.hook_position_bias is not None
            # computed once for the whole stack; with a cache, rows are the new queries against every key
            bias = self.hook_position_bias(self.position_bias(q_len, k_len, past_len).to(x.dtype))
        cross_mask = None
        if self.cfg.cross_attention:
            if encoder_out is None or encoder_mask is None:
                raise ValueError("the decoder needs the encoder output and its mask")
            cross_mask = build_additive_mask(encoder_mask.bool(), q_len, encoder_out.shape[1], False, x.dtype, x.device)
        if bias is not None:
            # mask + position bias added once for every block (as HF's T5 does), not once per layer
            mask = bias if mask is None else mask + bias
        return run_blocks(
            self.blocks,
            x,
            additive_mask=mask,
            encoder_out=encoder_out,
            cross_mask=cross_mask,
            kv_cache=kv_cache,
            final_norm=self.ln_final,
            final_norm_hook=self.hook_final_norm,
        )
