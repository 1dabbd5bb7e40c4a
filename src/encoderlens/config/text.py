"""Text encoders: embeddings and the encoder config."""

from __future__ import annotations

from dataclasses import dataclass, field

from encoderlens.config.attention import NormConfig
from encoderlens.config.heads import ClassifierHeadConfig, MLMHeadConfig, QAHeadConfig, SentencePoolingConfig
from encoderlens.config.stack import StackConfig, _SingleStackDims


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
        positions_skip_padding: Positions count only non-padding tokens (``tokens != pad_token_id``), as
            fairseq and HF's ``create_position_ids_from_input_ids`` do for RoBERTa / XLM-R: the ``k``-th
            non-padding token has position ``k - 1``; padding tokens read row ``position_offset - 1`` (the
            padding row). Needs ``pad_token_id``.
        d_embed: Width of the token / position / type embeddings when it differs from the residual stream
            (ALBERT, ELECTRA: factorised embeddings). None: ``d_model``.
        project: Whether a linear map ``d_embed -> d_model`` follows the embedding norm (ELECTRA when the
            sizes differ, ALBERT always).
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
    positions_skip_padding: bool = False
    d_embed: int | None = None
    project: bool = False
    zero_padding: bool = False

    def __post_init__(self) -> None:
        if self.positions_skip_padding and self.pad_token_id is None:
            raise ValueError("positions_skip_padding needs pad_token_id (the id whose positions are skipped)")
        if self.positions_skip_padding and self.position_offset < 1:
            raise ValueError(
                f"positions_skip_padding needs position_offset >= 1 (row offset-1 is the padding row), "
                f"got {self.position_offset}"
            )


@dataclass(frozen=True)
class EncoderConfig(_SingleStackDims):
    """A bidirectional text encoder (BERT family).

    Attributes:
        architecture: The HF architecture the checkpoint came from (informational only).
        model_type: The HF ``model_type`` (informational only).
        embed: Embedding settings.
        stack: Block stack settings.
        mlm_head: Masked-LM head, if the checkpoint has one.
        pooler: Whether a tanh pooler over the first token exists.
        nsp_head: Whether a next-sentence-prediction classifier exists (needs the pooler).
        classifier: Sequence or token classification head, if the checkpoint has one.
        sentence_pooling: Sentence-embedding pooling declared by a sentence-transformers folder, or None.
        param_source: Shared layers (ALBERT): block ``i`` uses the parameters of block ``param_source[i]``
            (every block still has its own hook points). None: every block has its own parameters.
        qa_head: Extractive question-answering head (start / end logits), if the checkpoint has one.
    """

    architecture: str
    model_type: str
    embed: EmbeddingConfig
    stack: StackConfig
    mlm_head: MLMHeadConfig | None = None
    pooler: bool = False
    nsp_head: bool = False
    classifier: ClassifierHeadConfig | None = None
    sentence_pooling: SentencePoolingConfig | None = None
    param_source: tuple[int, ...] | None = None
    qa_head: QAHeadConfig | None = None
    #: The device the model lives on (kept up to date by ``model.to``; TransformerLens's ``cfg.device``).
    device: str | None = field(default=None, compare=False)

    family = "encoder"

    def __post_init__(self) -> None:
        d_embed = self.embed.d_embed
        if d_embed is not None and d_embed != self.stack.d_model and not self.embed.project:
            raise ValueError(f"embeddings of width {d_embed} need project=True to reach d_model={self.stack.d_model}")
        if self.classifier is not None and self.classifier.input == "pooler" and not self.pooler:
            raise ValueError("classifier input='pooler' needs pooler=True")
        if self.param_source is not None:
            src = self.param_source
            if len(src) != self.stack.n_layers:
                raise ValueError(f"param_source needs one entry per block ({self.stack.n_layers}), got {len(src)}")
            for i, j in enumerate(src):
                if not 0 <= j <= i or src[j] != j:
                    raise ValueError(
                        f"param_source[{i}]={j} must name an earlier (or the same) block that owns its parameters"
                    )

    @property
    def d_embed(self) -> int:
        """Width of the embeddings (``d_model`` unless factorised)."""
        return self.stack.d_model if self.embed.d_embed is None else self.embed.d_embed

    @property
    def d_vocab(self) -> int:
        return self.embed.d_vocab
