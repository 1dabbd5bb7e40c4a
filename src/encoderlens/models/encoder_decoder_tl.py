"""TransformerLens's names on :class:`~encoderlens.models.encoder_decoder.HookedEncoderDecoder`.

TransformerLens's ``HookedEncoderDecoder`` (T5) keeps each side as a list of blocks (``encoder.{i}``,
``decoder.{i}``), the final norms at the root (``encoder_final_ln``, ``decoder_final_ln``), one root
``hook_embed`` on the encoder's token embedding, stacked weights over encoder then decoder blocks and a
raw ``unembed``. Here each side is a :class:`~encoderlens.components.stack.Stack` (``encoder.blocks.{i}``,
``encoder.ln_final``); this module adds TransformerLens's spellings as aliases with the same meaning:

==========================================  ==========================================
TransformerLens                             encoderlens (canonical)
==========================================  ==========================================
``hook_embed``                              ``encoder.hook_embed``
``encoder.{i}.X`` / ``decoder.{i}.X``        ``encoder.blocks.{i}.X`` / ``decoder.blocks.{i}.X``
``encoder_final_ln.X``                      ``encoder.ln_final.X``
``decoder_final_ln.X``                      ``decoder.ln_final.X``
``model.encoder[i]``                        ``model.encoder.blocks[i]``
``model.W_Q`` ... (encoder then decoder)    ``model.encoder.W_Q`` / ``model.decoder.W_Q``
``model.unembed(x)``                        ``x @ W_U + b_U`` (``lm_head`` also applies T5's scale)
==========================================  ==========================================
"""

from __future__ import annotations

import re

from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.components.heads import LMHead, Unembed
from encoderlens.components.stack_weights import StackWeights
from encoderlens.factored_matrix import FactoredMatrix
from encoderlens.models.encoder_decoder_generate import EncoderDecoderGeneration

_BLOCK = re.compile(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)")
_FINAL_LN = re.compile(r"(encoder|decoder)\.ln_final\.(.+)")


class EncoderDecoderTLNames(EncoderDecoderGeneration):
    """TransformerLens's module, hook and weight names for an encoder-decoder (see the module docstring)."""

    # ------------------------------------------------------------------ hook names
    def hook_alias(self, name: str) -> str | None:
        """TransformerLens's name of hook point ``name`` (``encoder.blocks.1.attn.hook_v`` -> ``encoder.1.attn.hook_v``)."""
        if name == "encoder.hook_embed":
            return "hook_embed"
        m = _BLOCK.fullmatch(name)
        if m:
            return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        m = _FINAL_LN.fullmatch(name)
        if m:
            return f"{m.group(1)}_final_ln.{m.group(2)}"
        return None

    # ------------------------------------------------------------------ modules
    @property
    def encoder_final_ln(self) -> nn.Module:
        """The encoder's final norm (``encoder.ln_final``), TransformerLens's name."""
        if self.encoder.ln_final is None:
            raise AttributeError(f"this {self.cfg.architecture} encoder has no final norm (its last block ends it)")
        return self.encoder.ln_final

    @property
    def decoder_final_ln(self) -> nn.Module:
        """The decoder's final norm (``decoder.ln_final``), TransformerLens's name."""
        ln = self._decoder().ln_final
        if ln is None:
            raise AttributeError(f"this {self.cfg.architecture} decoder has no final norm (its last block ends it)")
        return ln

    def _head(self) -> LMHead:
        if self.lm_head is None:
            raise AttributeError(
                f"this {self.cfg.architecture} checkpoint has no LM head, hence no unembedding; "
                "load a *ForConditionalGeneration checkpoint for logits"
            )
        return self.lm_head

    @property
    def unembed(self) -> Unembed:
        """TransformerLens's ``unembed``: the raw map ``x @ W_U + b_U`` (= HF's ``lm_head``).

        T5 with tied embeddings rescales the decoder output by ``d_model ** -0.5`` before it (HF and
        TransformerLens do it in the forward); :attr:`lm_head` includes that scale, ``unembed`` does not:
        ``model.lm_head(x) == model.unembed(x * model.lm_head.cfg.scale)``.
        """
        return Unembed(self._head())

    # ------------------------------------------------------------------ stacked weights
    def _all_blocks(self) -> StackWeights:
        blocks = list(self.encoder.blocks)
        if self.decoder is not None:
            dec = self.decoder
            if dec.cfg.n_heads != self.encoder.cfg.n_heads or dec.cfg.d_head != self.encoder.cfg.d_head:
                raise ValueError(
                    f"the root W_Q, QK... stack encoder then decoder blocks, and this {self.cfg.architecture} has "
                    f"{self.encoder.cfg.n_heads} encoder heads of {self.encoder.cfg.d_head} but {dec.cfg.n_heads} "
                    f"decoder heads of {dec.cfg.d_head}; use model.encoder.W_Q / model.decoder.W_Q"
                )
            blocks += list(dec.blocks)
        return StackWeights(nn.ModuleList(blocks))

    @property
    def W_Q(self) -> Float[Tensor, "layer head_index d_model d_head"]:
        """Self-attention ``W_Q`` of the encoder blocks then the decoder blocks (TransformerLens's stacking)."""
        return self._all_blocks().W_Q

    @property
    def W_K(self) -> Float[Tensor, "layer head_index d_model d_head"]:
        return self._all_blocks().W_K

    @property
    def W_V(self) -> Float[Tensor, "layer head_index d_model d_head"]:
        return self._all_blocks().W_V

    @property
    def W_O(self) -> Float[Tensor, "layer head_index d_head d_model"]:
        return self._all_blocks().W_O

    @property
    def b_Q(self) -> Float[Tensor, "layer head_index d_head"]:
        return self._all_blocks().b_Q

    @property
    def b_K(self) -> Float[Tensor, "layer head_index d_head"]:
        return self._all_blocks().b_K

    @property
    def b_V(self) -> Float[Tensor, "layer head_index d_head"]:
        return self._all_blocks().b_V

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._all_blocks().b_O

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per layer (encoder then decoder) and head."""
        return self._all_blocks().QK

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per layer (encoder then decoder) and head."""
        return self._all_blocks().OV

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._all_blocks().W_in

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._all_blocks().W_out

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._all_blocks().b_in

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._all_blocks().b_out

    def all_head_labels(self) -> list[str]:
        """``["EL0H0", ..., "DL0H0", ...]``: encoder heads then decoder heads, as TransformerLens labels them."""
        enc = [f"EL{layer}H{h}" for layer in range(len(self.encoder)) for h in range(self.encoder.cfg.n_heads)]
        if self.decoder is None:
            return enc
        dec = self.decoder
        return enc + [f"DL{layer}H{h}" for layer in range(len(dec)) for h in range(dec.cfg.n_heads)]

    @property
    def W_pos(self) -> Tensor:
        """Raises ``NotImplementedError``: T5 has no absolute positions; BART has one table per stack."""
        if self.encoder.pos_embed is None:
            raise NotImplementedError(
                "T5 does not have absolute positional embeddings; it uses a relative position bias "
                "(model.encoder[0].attn.rel_pos_bias.weight, model.decoder[0].attn.rel_pos_bias.weight)"
            )
        raise NotImplementedError(
            f"{self.cfg.architecture} has one learned position table per stack: "
            "use model.encoder.pos_embed.W_pos / model.decoder.pos_embed.W_pos"
        )
