"""HookedEncoder: BERT-family text encoders rebuilt from hooked components."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.cache import StreamSpec
from encoderlens.components.attention import build_additive_mask
from encoderlens.components.attention_deberta import RelativeEmbedding
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.heads import ClassifierHead, MLMHead, MLMUnembed, NSPHead, Pooler, QAHead, SentencePooler
from encoderlens.components.norm import make_norm
from encoderlens.components.stack import run_blocks
from encoderlens.components.text_embed import TextEmbed, nest_embed_weights
from encoderlens.config import EncoderConfig, HookedTransformerConfig, SentencePoolingConfig
from encoderlens.hooks import HookPoint
from encoderlens.io.checkpoint import Checkpoint, load_tokenizer
from encoderlens.io.sentence_transformers import read_sentence_transformer
from encoderlens.io.text import (
    TextBatch,
)
from encoderlens.models.base import HookedModel, StackWeightsMixin
from encoderlens.models.contract import (
    TOKEN_ALIGNMENT_HINT,
    ExampleInput,
    InputSpec,
    Prepared,
    Readout,
    text_position_labels,
)
from encoderlens.models.encoder_text import EncoderTextIO
from encoderlens.models.mask_fill import mask_predictions

EncoderReturnType = Literal[
    "auto", "logits", "predictions", "mask_predictions", "embeddings", "pooled", "nsp", "classification", "qa",
    "sentence_embedding", "all",
]  # fmt: skip
_RETURN_TYPES = (
    "auto", "logits", "predictions", "mask_predictions", "embeddings", "pooled", "nsp", "classification", "qa",
    "sentence_embedding", "all", None,
)  # fmt: skip


@dataclass
class EncoderOutput:
    """Everything the encoder computes (``return_type="all"``); absent heads give None.

    ``classifier_logits`` is ``(batch, n_labels)`` for a sequence classifier and ``(batch, pos, n_labels)``
    for a token classifier; ``start_logits`` / ``end_logits`` are the question-answering head's (HF's names),
    ``(batch, pos)`` each; ``sentence_embedding`` is the sentence-transformers pooling (when declared).
    """

    embeddings: Float[Tensor, "batch pos d_model"]
    logits: Float[Tensor, "batch pos d_vocab"] | None
    pooled: Float[Tensor, "batch d_model"] | None
    nsp_logits: Float[Tensor, "batch 2"] | None
    attention_mask: Int[Tensor, "batch pos"]
    classifier_logits: Tensor | None = None
    sentence_embedding: Float[Tensor, "batch d_sentence"] | None = None
    start_logits: Float[Tensor, "batch pos"] | None = None
    end_logits: Float[Tensor, "batch pos"] | None = None


class HookedEncoder(StackWeightsMixin, EncoderTextIO, HookedModel):
    """A bidirectional text encoder with a hook point on every activation.

    Hook points (``i`` = block):

    - ``embed.hook_embed``, ``embed.hook_pos_embed``, ``embed.hook_token_type_embed``: the embedding parts
      (``embed`` is TransformerLens's ``BertEmbed``: :class:`~encoderlens.components.text_embed.TextEmbed`).
    - ``embed.ln.hook_scale | hook_normalized``: the embedding norm.
    - ``embed.hook_embed_pre_proj``: factorised embeddings only (ALBERT, ELECTRA): their normalised sum, of
      width ``d_embed``, before the projection to ``d_model``.
    - ``hook_full_embed``: their sum after the embedding norm (and projection): the input of block 0.
    - ``blocks.{i}.hook_resid_pre | hook_attn_out | hook_resid_mid | hook_mlp_out | hook_resid_post``
    - ``blocks.{i}.attn.hook_q | hook_k | hook_v | hook_attn_scores | hook_pattern | hook_z | hook_result``
    - ``blocks.{i}.mlp.hook_pre | hook_post``; ``blocks.{i}.ln1 | ln2 .hook_scale | hook_normalized``
    - ``mlm_head.hook_transformed``, ``pooler.hook_pooled``, ``classifier.hook_pooled | hook_hidden |
      hook_logits``, ``qa_head.hook_logits``, ``sentence_pooler.hook_pooled | hook_normalized`` when those
      heads exist (ModernBERT's classifier and QA heads add ``hook_hidden`` and ``ln.*``).

    Shared layers (ALBERT, ``cfg.param_source``): every application of a shared layer is its own block
    module (``blocks.{i}``) holding the *same* parameter objects, so each application has its own hook
    points while the weights stay one set.
    - Rotary models (ModernBERT): ``blocks.{i}.attn.hook_rot_q | hook_rot_k``.
    - Disentangled attention (DeBERTa): ``rel_embed.hook_rel_embed``, ``blocks.{i}.attn.hook_pos_q |
      hook_pos_k | hook_c2c_scores | hook_c2p_scores | hook_p2c_scores``.

    Example:
        >>> model = HookedEncoder.from_pretrained("default")
        >>> emb, cache = model.run_with_cache("The cat sat.", return_type="embeddings")
        >>> cache["pattern", 0].shape  # (batch, head_index, query_pos, key_pos)
    """

    family: ClassVar[str] = "encoder"

    cfg: EncoderConfig

    def __init__(
        self,
        cfg: EncoderConfig | HookedTransformerConfig | dict[str, Any],
        tokenizer: Any = None,
        sentence_pooling: SentencePoolingConfig | None = None,
        sentence_pooling_note: str = "",
    ) -> None:
        """Build the model (weights uninitialised; use :meth:`from_pretrained`).

        Args:
            cfg: The model config; or, as TransformerLens, a :class:`HookedTransformerConfig` or a dict of its
                fields (a randomly initialisable BERT layout).
            tokenizer: HF tokenizer for text input.
            sentence_pooling: Sentence-embedding pooling; overrides ``cfg.sentence_pooling`` (from_pretrained
                reads it from a sentence-transformers folder; pass one to pool any checkpoint).
            sentence_pooling_note: Why a sentence-transformers folder's pipeline is not reproduced.
        """
        super().__init__()
        if isinstance(cfg, dict):
            cfg = HookedTransformerConfig.from_dict(cfg)
        if isinstance(cfg, HookedTransformerConfig):
            cfg = cfg.to_encoder_config()
        if not isinstance(cfg, EncoderConfig):
            raise TypeError(
                f"HookedEncoder needs an EncoderConfig, a HookedTransformerConfig or a dict, got {type(cfg).__name__}; "
                "to load a checkpoint use HookedEncoder.from_pretrained(name)"
            )
        if sentence_pooling is not None:
            if not isinstance(sentence_pooling, SentencePoolingConfig):
                raise TypeError(
                    f"sentence_pooling must be a SentencePoolingConfig, got {type(sentence_pooling).__name__}"
                )
            cfg = dataclasses.replace(cfg, sentence_pooling=sentence_pooling)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.sentence_pooling_note = sentence_pooling_note
        d = cfg.d_model
        de = cfg.d_embed
        self.embed = TextEmbed(de, d, cfg.embed)
        self.hook_full_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg.stack, layer=i) for i in range(cfg.n_layers)])
        disentangled = cfg.stack.attn.disentangled
        # DeBERTa: one relative embedding table, projected by every block
        self.rel_embed = RelativeEmbedding(d, disentangled) if disentangled is not None else None
        self._tie_shared_blocks()
        self.ln_final = make_norm(d, cfg.stack.norm) if cfg.stack.final_norm else None
        self.mlm_head = MLMHead(d, cfg.d_vocab, cfg.mlm_head, self.embed.embed) if cfg.mlm_head is not None else None
        self.unembed = MLMUnembed(self.mlm_head) if self.mlm_head is not None else None
        self.pooler = Pooler(d) if cfg.pooler else None
        self.nsp_head = NSPHead(d) if cfg.nsp_head else None
        self.classifier = ClassifierHead(d, cfg.classifier) if cfg.classifier is not None else None
        self.qa_head = QAHead(d, cfg.qa_head) if cfg.qa_head is not None else None
        sp = cfg.sentence_pooling
        self.sentence_pooler = SentencePooler(sp, d) if sp is not None else None
        self.setup()

    @classmethod
    def extras_from_checkpoint(cls, ckpt: Checkpoint) -> dict[str, Any]:
        spec = read_sentence_transformer(ckpt.path)
        return {
            "tokenizer": load_tokenizer(ckpt.path, ckpt.config),
            "sentence_pooling": spec.pooling,
            "sentence_pooling_note": spec.note,
        }

    def weights_from_checkpoint(self, ckpt: Checkpoint) -> dict[str, Tensor]:
        """The sentence head's ``Dense`` weights, read from the checkpoint's sentence-transformers folder."""
        sp = self.cfg.sentence_pooling
        if sp is None or not sp.dense:
            return {}
        spec = read_sentence_transformer(ckpt.path)
        if spec.pooling is None or spec.pooling.dense != sp.dense:
            raise ValueError(
                f"sentence_pooling declares Dense layers {sp.dense}, but the checkpoint folder "
                f"{'declares ' + str(spec.pooling.dense) if spec.pooling is not None else 'has no usable modules.json'}; "
                "Dense weights are read from the folder's own modules, so pass a sentence_pooling without dense layers "
                "or load the folder as it is"
            )
        out: dict[str, Tensor] = {}
        for i, (W, b) in enumerate(spec.dense_weights):
            out[f"sentence_pooler.dense.{i}.W"] = W
            if b is not None:
                out[f"sentence_pooler.dense.{i}.b"] = b
        return out

    # ------------------------------------------------------------------ shared layers
    def _tie_shared_blocks(self) -> None:
        """Make block ``i`` hold block ``param_source[i]``'s parameter objects (ALBERT shared layers)."""
        src = self.cfg.param_source
        if src is None:
            return
        for i, j in enumerate(src):
            if i == j:
                continue
            owner = self.blocks[j]
            for name, module in self.blocks[i].named_modules():
                owner_module = owner.get_submodule(name) if name else owner
                for pname in list(module._parameters):
                    module._parameters[pname] = owner_module._parameters[pname]

    def load_converted(
        self,
        state_dict: dict[str, Tensor],
        devices: dict[str, torch.device] | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Load converted weights; shared blocks are tied again (loading assigns new parameter objects).

        Converters name the embedding weights flat (``embed.W_E``, ``pos_embed.W_pos``, ``embed_ln.w``); they
        are renamed into :class:`TextEmbed`'s (``embed.embed.W_E``...). ``devices`` / ``dtype``: as
        :meth:`HookedModel.load_converted` (``state_dict`` is emptied).
        """
        nested = nest_embed_weights(state_dict)
        if devices is not None:
            state_dict.clear()  # the renamed dict holds the only references, released as each is placed
        super().load_converted(nested, devices, dtype)
        self._tie_shared_blocks()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> HookedEncoder:
        # .to()/.half() may replace parameter objects one module at a time; re-share them afterwards
        super()._apply(fn, recurse)
        self._tie_shared_blocks()
        return self

    # ------------------------------------------------------------------ weights
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        if self.embed.pos_embed is None:
            raise AttributeError("this model has no learned position embedding")
        return self.embed.pos_embed.W_pos

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        """Token and position embeddings stacked: ``cat([W_E, W_pos])`` (TransformerLens)."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        if self.mlm_head is None:
            raise AttributeError("this checkpoint has no MLM head, hence no unembedding W_U")
        return self.mlm_head.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        if self.mlm_head is None:
            raise AttributeError("this checkpoint has no MLM head, hence no unembedding b_U")
        return self.mlm_head.b_U

    @property
    def class_labels(self) -> tuple[str, ...]:
        """Label names of the classification head, in logit order (HF ``config.id2label``)."""
        if self.classifier is None:
            # ValueError, like the other missing-head errors of this model (predict_labels, return_type)
            raise ValueError("this checkpoint has no classification head, hence no class labels")
        return self.classifier.cfg.labels

    # ------------------------------------------------------------------ forward
    def embed_input(self, batch: TextBatch) -> Float[Tensor, "batch pos d_model"]:
        """Embedding sum (after the embedding norm), i.e. the input of block 0 (``hook_full_embed``)."""
        return self.hook_full_embed(self.embed(batch.tokens, batch.token_type_ids, batch.attention_mask))

    def encode(self, batch: TextBatch, stop_at_layer: int | None = None) -> Float[Tensor, "batch pos d_model"]:
        """Run embeddings and blocks (``stop_at_layer``: run blocks ``[0, stop_at_layer)`` only, no final norm)."""
        x = self.embed_input(batch)
        mask = build_additive_mask(
            batch.attention_mask.bool(), x.shape[1], x.shape[1], self.cfg.stack.attn.causal, x.dtype, x.device
        )
        rel = self.rel_embed(x.shape[1], x.shape[1]) if self.rel_embed is not None else None
        return run_blocks(
            self.blocks,
            x,
            additive_mask=mask,
            stop_at_layer=stop_at_layer,
            rel_embeddings=rel,
            final_norm=self.ln_final,
        )

    def encoder_output(
        self,
        tokens: Any,
        token_type_ids: Any = None,
        one_zero_attention_mask: Any = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The final residual stream (after the last block and ``ln_final`` where the model has one).

        Same as ``forward(..., return_type="embeddings")``; TransformerLens's name and argument order.
        """
        return self.encode(self.tokenize(tokens, one_zero_attention_mask, token_type_ids))

    def forward(
        self,
        input: Any,
        return_type: EncoderReturnType | None = "auto",
        token_type_ids: Any = None,
        one_zero_attention_mask: Any = None,
        top_k: int = 5,
        stop_at_layer: int | None = None,
    ) -> Any:
        """Run the encoder.

        Args:
            input: A string, a list of strings, a ``(text_a, text_b)`` pair or a list of pairs, a
                tokenizer's output (``BatchEncoding``), or token ids ``(pos,)`` / ``(batch, pos)``.
            return_type: ``"logits"`` (MLM vocabulary logits), ``"predictions"`` (as TransformerLens: the
                argmax fill of the masks, decoded: a string, or ``["Prediction 0: w", ...]`` when the decoded
                fills contain a space), ``"mask_predictions"`` (top-k :class:`MaskPrediction` of every
                ``[MASK]``; a list per text, or a list of lists for a batch), ``"embeddings"`` (final
                residual stream), ``"pooled"``, ``"nsp"`` (next-sentence logits), ``"classification"``
                (classifier logits: ``(batch, n_labels)`` for a sequence head, ``(batch, pos, n_labels)``
                for a token head; names in :attr:`class_labels`), ``"qa"`` (question answering: ``(batch,
                pos, 2)`` logits, ``[..., 0]`` HF's ``start_logits`` and ``[..., 1]`` its ``end_logits``),
                ``"sentence_embedding"`` (the pooling a sentence-transformers folder declares), ``"all"``
                (:class:`EncoderOutput`), ``"auto"`` (the default: logits with an MLM head, the QA logits
                with a QA head, else embeddings; see :attr:`default_return_type`), or None (run for hooks
                only).
            token_type_ids: With token ids: segment ids.
            one_zero_attention_mask: With token ids: 1 = real token, 0 = padding. Token ids that start or
                end with the padding token and come without a mask run unmasked, with a warning (as HF).
            top_k: Predictions per mask for ``return_type="mask_predictions"``.

        Differs from TransformerLens: a mask passed with text raises (text carries its own).
            stop_at_layer: Stop before this block and return the residual stream (``"embeddings"`` only).
        """
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}")
        if return_type == "auto":
            return_type = cast(
                EncoderReturnType, "embeddings" if stop_at_layer is not None else self.default_return_type
            )
        if return_type in ("logits", "predictions", "mask_predictions") and self.mlm_head is None:
            raise ValueError(
                f"return_type={return_type!r} needs an MLM head, and this {self.cfg.architecture} checkpoint has none; "
                "use return_type='embeddings' (or load a *ForMaskedLM checkpoint)"
            )
        if return_type in ("pooled", "nsp") and self.pooler is None:
            raise ValueError(f"return_type={return_type!r} needs a pooler, and this checkpoint has none")
        if return_type == "nsp" and self.nsp_head is None:
            raise ValueError("return_type='nsp' needs a next-sentence head (a *ForPreTraining checkpoint)")
        if return_type == "classification" and self.classifier is None:
            raise ValueError(
                f"return_type='classification' needs a classification head, and this {self.cfg.architecture} "
                "checkpoint has none; load a *ForSequenceClassification or *ForTokenClassification checkpoint"
            )
        if return_type == "qa" and self.qa_head is None:
            raise ValueError(
                f"return_type='qa' needs a question-answering head, and this {self.cfg.architecture} checkpoint "
                "has none; load a *ForQuestionAnswering checkpoint"
            )
        if return_type == "sentence_embedding" and self.sentence_pooler is None:
            why = self.sentence_pooling_note or "the checkpoint folder has no sentence-transformers modules.json"
            raise ValueError(
                f"return_type='sentence_embedding' needs a sentence pooling, and this model has none: {why}. "
                "Pass sentence_pooling=SentencePoolingConfig(...) to from_pretrained to pool it yourself"
            )
        if stop_at_layer is not None and return_type not in ("embeddings", None):
            raise ValueError("stop_at_layer returns the residual stream: use return_type='embeddings'")
        batch = self.tokenize(input, one_zero_attention_mask, token_type_ids)
        resid = self.encode(batch, stop_at_layer)
        if return_type is None:
            return None
        if return_type == "embeddings":
            return resid
        if return_type == "pooled":
            assert self.pooler is not None
            return self.pooler(resid)
        if return_type == "nsp":
            assert self.pooler is not None and self.nsp_head is not None
            return self.nsp_head(self.pooler(resid))
        if return_type == "classification":
            return self._classify(resid, batch.attention_mask)
        if return_type == "qa":
            assert self.qa_head is not None
            return self.qa_head(resid)
        if return_type == "sentence_embedding":
            assert self.sentence_pooler is not None
            return self.sentence_pooler(resid, batch.attention_mask)
        if return_type == "all":
            pooled = self.pooler(resid) if self.pooler is not None else None
            qa = self.qa_head(resid) if self.qa_head is not None else None
            return EncoderOutput(
                embeddings=resid,
                logits=self.mlm_head.logits(resid) if self.mlm_head is not None else None,
                pooled=pooled,
                nsp_logits=self.nsp_head(pooled) if self.nsp_head is not None and pooled is not None else None,
                attention_mask=batch.attention_mask,
                classifier_logits=(
                    self._classify(resid, batch.attention_mask, pooled) if self.classifier is not None else None
                ),
                sentence_embedding=(
                    self.sentence_pooler(resid, batch.attention_mask) if self.sentence_pooler is not None else None
                ),
                start_logits=qa[..., 0] if qa is not None else None,
                end_logits=qa[..., 1] if qa is not None else None,
            )
        assert self.mlm_head is not None
        logits = self.mlm_head.logits(resid)
        if return_type == "logits":
            return logits
        if return_type == "predictions":
            return self._tl_predictions(batch.tokens, logits)
        preds = mask_predictions(self.tokenizer, batch, logits, top_k)
        return preds[0] if isinstance(input, str) or (isinstance(input, Tensor) and input.ndim == 1) else preds

    def _tl_predictions(self, tokens: Tensor, logits: Tensor) -> str | list[str]:
        """TransformerLens's ``return_type="predictions"``: decoded argmax fills of every mask token."""
        tok = self.tokenizer
        if tok is None or tok.mask_token_id is None:
            raise ValueError("return_type='predictions' needs a tokenizer with a mask token; this model has none")
        at_masks = tokens == tok.mask_token_id
        if not bool(at_masks.any()):
            raise ValueError(f"return_type='predictions' found no mask token ({tok.mask_token!r}) in the input")
        predictions: str = tok.decode(logits[at_masks].argmax(dim=-1))
        if " " in predictions:
            return [f"Prediction {i}: {p}" for i, p in enumerate(predictions.split(" "))]
        return predictions

    def _classify(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        attention_mask: Int[Tensor, "batch pos"],
        pooled: Tensor | None = None,
    ) -> Tensor:
        assert self.classifier is not None
        head = self.classifier.cfg
        if head.task == "token":
            return self.classifier(resid)
        if head.input == "pooler":
            assert self.pooler is not None
            return self.classifier(self.pooler(resid) if pooled is None else pooled)
        return self.classifier(self.classifier.pool(resid, attention_mask))

    def predict_labels(self, input: Any, one_zero_attention_mask: Any = None, token_type_ids: Any = None) -> list[Any]:
        """Predicted label names from the classification head.

        Single-label heads give the argmax label, multi-label heads the list of labels whose logit is
        positive (sigmoid > 0.5). Sequence heads give one entry per text; token heads a list per text
        (padding dropped). Regression heads have no labels: use ``return_type="classification"``.

        Example:
            >>> model.predict_labels(["great film", "dull"])  # e.g. ['POSITIVE', 'NEGATIVE']
        """
        if self.classifier is None:
            raise ValueError("predict_labels needs a classification head, and this checkpoint has none")
        head = self.classifier.cfg
        if head.problem_type == "regression":
            raise ValueError("this head is a regression head (no labels); use return_type='classification'")
        batch = self.tokenize(input, one_zero_attention_mask, token_type_ids)
        with torch.no_grad():  # names only: no graph needed (hooks still fire)
            logits = self._classify(self.encode(batch), batch.attention_mask)
        labels = head.labels

        def name(row: Tensor) -> Any:
            if head.problem_type == "multi_label_classification":
                return [labels[j] for j in (row > 0).nonzero().flatten().tolist()]
            return labels[int(row.argmax())]

        if head.task == "sequence":
            return [name(row) for row in logits]
        return [[name(v) for v in row[m.bool()]] for row, m in zip(logits, batch.attention_mask)]

    # ------------------------------------------------------------------ cache support
    def stream_spec(self, stream: str | None = None) -> StreamSpec:
        if stream not in (None, "encoder"):
            raise ValueError(f"a HookedEncoder has one residual stream; got stream={stream!r}, pass None")
        embed_hooks = tuple(
            name
            for name, hp in (
                ("embed.hook_embed", self.embed.hook_embed),
                ("embed.hook_pos_embed", self.embed.hook_pos_embed),
                ("embed.hook_token_type_embed", self.embed.hook_token_type_embed),
            )
            if hp is not None
        )
        pre_ln = self.cfg.stack.norm_position == "pre"
        if pre_ln and self.embed.ln is not None:
            # pre-LN with an embedding norm (ModernBERT): the normalised embedding is the stream's first summand
            embed_hooks = ("hook_full_embed",)
        return StreamSpec(
            prefix="",
            n_layers=self.cfg.n_layers,
            n_heads=self.cfg.n_heads,
            norm_position=self.cfg.stack.norm_position,
            embed_hooks=embed_hooks,
            embed_normalized=self.embed.ln is not None and not pre_ln,
            embed_norm="embed.ln" if self.embed.ln is not None and not pre_ln else None,
            final_norm="ln_final" if self.ln_final is not None else None,
            has_cross_attention=False,
            blocks=self.blocks,
            unembed_fn=self._linear_unembed,
            unembed_note=(
                "the MLM head applies dense -> GELU -> LayerNorm before W_U, so logits are not linear in the "
                "residual stream"
                if self.mlm_head is not None
                else "this checkpoint has no MLM head"
            ),
        )

    def _linear_unembed(self) -> tuple[Tensor, Tensor] | None:
        # the BERT MLM head is nonlinear (dense + act + LN): no linear unembedding exists
        return None

    # ------------------------------------------------------------------ model contract
    def _prepare_input(
        self, input: Any, one_zero_attention_mask: Any = None, token_type_ids: Any = None, **options: Any
    ) -> Prepared:
        """Text, ``(a, b)`` pairs, or token ids (with ``one_zero_attention_mask`` / ``token_type_ids``)."""
        if options:
            raise TypeError(f"unexpected options {sorted(options)}; accepted: one_zero_attention_mask, token_type_ids")
        batch = self.tokenize(input, one_zero_attention_mask, token_type_ids)
        kwargs: dict[str, Any] = {"one_zero_attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = batch.token_type_ids
        return Prepared(
            family=self.family,
            args=(batch.tokens,),
            kwargs=kwargs,
            masks={None: batch.attention_mask},
            labels={None: text_position_labels(self.tokenizer, batch.tokens, batch.attention_mask)},
            token_ids={None: batch.tokens},
            batch_size=int(batch.tokens.shape[0]),
            alignment_hint=TOKEN_ALIGNMENT_HINT,
        )

    def input_spec(self, stream: str | None = None) -> InputSpec:
        """The token embeddings (``embed.hook_embed``, ``(batch, pos, d_embed)``)."""
        self.stream_spec(stream)  # validates the stream name
        return InputSpec("embed.hook_embed", "token")

    @property
    def default_return_type(self) -> str:
        """``"logits"`` (MLM) with an MLM head, ``"qa"`` with a question-answering head, else ``"embeddings"``."""
        if self.mlm_head is not None:
            return "logits"
        return "qa" if self.qa_head is not None else "embeddings"

    def readout(self, stream: str | None = None) -> Readout | None:
        """The MLM head (nonlinear: dense -> act -> LN -> unembed), else a QA or a token-classification head.

        A QA head's readout (kind ``"qa"``) gives ``(..., 2)`` logits labelled ``("start", "end")``: the
        logit lens and direct logit attribution read a position's start or end logit through it. Its
        probabilities are over positions (HF's span loss), not over these two labels.
        """
        self.stream_spec(stream)  # validates the stream name
        if self.mlm_head is not None:
            return Readout("mlm_head", "mlm", self.mlm_head.logits, linear=False, return_type="logits")
        if self.qa_head is not None:
            qa = self.qa_head
            return Readout("qa_head", "qa", qa, qa.W_hidden is None, "qa", output_labels=qa.cfg.labels)
        head = self.classifier
        if head is None or head.cfg.task != "token":
            return None
        linear = head.W_hidden is None
        return Readout("classifier", "classifier", head, linear, "classification", output_labels=head.cfg.labels)

    def example_input(self) -> ExampleInput:
        if self.tokenizer is not None:
            return ExampleInput("Hello world", {}, "the text 'Hello world'")
        return ExampleInput(torch.tensor([[1, 2, 3, 4]]) % self.cfg.d_vocab, {}, "4 token ids")
