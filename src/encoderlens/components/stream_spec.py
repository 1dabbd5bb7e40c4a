"""How a model's residual stream is built (:class:`StreamSpec`), as the cache and the analysis tools read it,
and the folding of a final norm's affine into an unembedding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass(frozen=True)
class StreamSpec:
    """How a model's residual stream is built, as the cache needs to know it.

    Attributes:
        prefix: Hook-name prefix of the stream (``""``, ``"encoder."``, ``"decoder."``).
        n_layers: Blocks in the stream.
        n_heads: Heads per attention layer.
        norm_position: ``"pre"`` or ``"post"``.
        embed_hooks: Full hook names whose sum is the stream's input (before any embedding norm).
        embed_normalized: Whether that sum is normalised before block 0 (BERT, wav2vec2-base).
        final_norm: Module path of the norm after the last block, or None.
        has_cross_attention: Whether blocks have cross-attention (decoders).
        blocks: The stream's blocks (for ``W_O`` and norms).
        unembed_fn: Builds :attr:`unembed` on first access (None: logits are not linear in the stream).
            Lazy because folding a norm into a vocabulary-sized matrix costs a pass over it (T5-small:
            16 M entries), and most users of a spec (``run_with_cache``, hook names) never read it.
        unembed_note: Why there is no linear unembedding, when there is none.
        embed_norm: Module path of the norm between the embedding summands and block 0 (when
            ``embed_normalized``; None: ``{prefix}embed_ln``).
    """

    prefix: str
    n_layers: int
    n_heads: int
    norm_position: str
    embed_hooks: tuple[str, ...]
    embed_normalized: bool
    final_norm: str | None
    has_cross_attention: bool
    blocks: nn.ModuleList
    unembed_fn: Callable[[], tuple[Tensor, Tensor] | None] | None = field(default=None, repr=False, compare=False)
    unembed_note: str = ""
    embed_norm: str | None = None

    @cached_property
    def unembed(self) -> tuple[Tensor, Tensor] | None:
        """``(W_U, b_U)`` when logits are a linear function of the stream, else None (see ``unembed_note``).

        With a final norm, they act on that norm's ``hook_normalized`` (what
        :meth:`ActivationCache.apply_ln_to_stack` gives), so the norm's weight and bias are folded in
        (:func:`fold_norm_into_unembed`); without one, on the final stream itself. Built on first access.
        """
        return None if self.unembed_fn is None else self.unembed_fn()

    def resid_hook(self, layer: int, where: str = "post") -> str:
        """Full name of the hook holding the residual stream itself in block ``layer``.

        ``where``: ``"mid"`` (after attention), ``"mid_cross"`` (after cross-attention) or ``"post"`` (the
        block's output, = the next block's ``hook_resid_pre``). Pre-LN: ``hook_resid_{where}``. Post-LN
        (as TransformerLens's BertBlock): ``hook_resid_{where}`` is the sum entering the norm, and the
        stream is ``hook_normalized_resid_{where}``.
        """
        if where not in ("mid", "mid_cross", "post"):
            raise ValueError(f"where must be 'mid', 'mid_cross' or 'post', got {where!r}")
        kind = "normalized_resid" if self.norm_position == "post" else "resid"
        return f"{self.prefix}blocks.{layer}.hook_{kind}_{where}"

    def renormalizations(self, layer: int) -> tuple[tuple[str, str, str], ...]:
        """Where block ``layer`` renormalises the residual stream itself, in order.

        Post-LN: ``(sub-layer, hook of the sum entering the norm, norm module path)`` after self-attention
        (``"attn"``: ``hook_resid_mid``, ``ln1``), cross-attention (``"cross"``, decoders:
        ``hook_resid_mid_cross``, ``ln2``) and the MLP (``"mlp"``: ``hook_resid_post``, the MLP norm). The
        normalised sum is the stream the next sub-layer reads. Pre-LN: ``()`` (the norms sit on the
        branches; the stream is a plain sum).
        """
        if self.norm_position != "post":
            return ()
        b = f"{self.prefix}blocks.{layer}."
        steps = [("attn", b + "hook_resid_mid", b + "ln1")]
        if self.has_cross_attention:
            steps.append(("cross", b + "hook_resid_mid_cross", b + "ln2"))
        steps.append(("mlp", b + "hook_resid_post", b + str(self.blocks[layer].mlp_norm_name)))
        return tuple(steps)


def fold_norm_into_unembed(norm: nn.Module | None, W_U: Tensor, b_U: Tensor) -> tuple[Tensor, Tensor]:
    """Fold a final norm's affine ``(w, b)`` into an unembedding: ``W = diag(w) W_U``, ``b' = b_U + b W_U``.

    Then ``logits = normalized @ W + b'`` with ``normalized`` the norm's output before its affine.
    """
    if norm is None:
        return W_U, b_U
    bias = getattr(norm, "b", None)
    if isinstance(bias, Tensor):
        b_U = b_U + bias.to(W_U.device) @ W_U  # the norm and the head may sit on two devices (device_map)
    weight = norm.w
    assert isinstance(weight, Tensor)
    return weight.to(W_U.device)[:, None] * W_U, b_U


@runtime_checkable
class CacheHost(Protocol):
    """What the cache needs of its model (every :class:`~encoderlens.models.base.HookedModel` has it)."""

    streams: tuple[str | None, ...]

    def stream_spec(self, stream: str | None = None) -> StreamSpec: ...

    def get_submodule(self, target: str) -> nn.Module: ...
