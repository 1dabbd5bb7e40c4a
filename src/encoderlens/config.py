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
class MLMHeadConfig:
    """BERT-style masked-language-model head: dense -> act -> norm -> unembed.

    The transform maps ``d_model`` to the token-embedding width (``d_embed`` in factorised models such as
    ALBERT and the ELECTRA generator), where the unembedding reads it.

    Attributes:
        act_fn: Activation of the transform.
        norm: Norm after the transform.
        tied: Whether the unembedding shares weights with the token embedding.
    """

    act_fn: str
    norm: NormConfig
    tied: bool = True


ClassifierTask = Literal["sequence", "token"]
ClassifierInput = Literal["first_token", "pooler"]
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]


@dataclass(frozen=True)
class ClassifierHeadConfig:
    """A classification head: ``[dense -> act ->] linear``.

    Attributes:
        task: ``"sequence"`` (one prediction per text) or ``"token"`` (one per position).
        labels: Label names in logit order (HF ``config.id2label``).
        input: For sequence heads: ``"first_token"`` (the final residual at position 0, RoBERTa /
            ELECTRA / DistilBERT) or ``"pooler"`` (the model's tanh pooler, BERT / ALBERT).
            Token heads read every position.
        hidden_act: Activation of a hidden ``d_model x d_model`` dense layer before the output layer
            (RoBERTa ``tanh``, ELECTRA ``gelu``, DistilBERT ``relu``), or None for one linear layer.
        problem_type: How logits become predictions: softmax over labels (single label), a sigmoid per
            label (multi label) or raw scores (regression).
    """

    task: ClassifierTask
    labels: tuple[str, ...]
    input: ClassifierInput = "first_token"
    hidden_act: str | None = None
    problem_type: ProblemType = "single_label_classification"

    def __post_init__(self) -> None:
        if self.task not in ("sequence", "token"):
            raise ValueError(f"classifier task must be 'sequence' or 'token', got {self.task!r}")
        if self.input not in ("first_token", "pooler"):
            raise ValueError(f"classifier input must be 'first_token' or 'pooler', got {self.input!r}")
        if self.task == "token" and self.input != "first_token":
            raise ValueError("a token classifier reads every position; input='pooler' applies to sequence heads")
        if not self.labels:
            raise ValueError("a classifier needs at least one label")
        if self.hidden_act is not None and self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.hidden_act!r}; expected one of {ACTIVATIONS}")
        if self.problem_type not in ("single_label_classification", "multi_label_classification", "regression"):
            raise ValueError(f"unknown problem_type {self.problem_type!r}")

    @property
    def n_labels(self) -> int:
        return len(self.labels)


#: Sentence-transformers pooling modes, in the order they are concatenated when several are set.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


@dataclass(frozen=True)
class SentencePoolingConfig:
    """Sentence embedding as a sentence-transformers checkpoint declares it (``modules.json``, ``1_Pooling``).

    Attributes:
        modes: Pooling modes (see :data:`POOLING_MODES`); several are concatenated in this order.
        normalize: Whether a ``Normalize`` module (L2 normalisation) follows the pooling.
        max_seq_length: Texts are truncated to this many tokens (``sentence_bert_config.json``), or None.
        do_lower_case: Whether texts are lower-cased before tokenisation.
    """

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError("sentence pooling needs at least one mode")
        bad = [m for m in self.modes if m not in POOLING_MODES]
        if bad:
            raise ValueError(f"unknown sentence pooling mode(s) {bad}; expected some of {POOLING_MODES}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be positive, got {self.max_seq_length}")


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


ConvNorm = Literal["group", "layer"]
PosConvNorm = Literal["weight_norm", "batch_norm"]


@dataclass(frozen=True)
class AudioFrontendConfig:
    """The wav2vec2/HuBERT front end: conv feature encoder, feature projection, convolutional positions.

    Attributes:
        conv_dim: Output channels of each conv layer.
        conv_kernel: Kernel size of each conv layer (samples for the first, frames after).
        conv_stride: Stride of each conv layer.
        conv_bias: Whether the conv layers have biases.
        conv_norm: ``"group"``: only the first conv layer is normalised, per channel over time
            (``GroupNorm(C, C)``, wav2vec2-base / HuBERT-base); ``"layer"``: every conv layer is
            followed by a LayerNorm over channels at each frame (large / lv60 checkpoints).
        conv_act_fn: Activation after each conv layer (and after the positional conv).
        conv_norm_eps: Epsilon of the conv-layer norms (PyTorch's default 1e-5 in HF).
        proj_norm: LayerNorm before the feature projection, or None (HuBERT ``feat_proj_layer_norm=False``).
        d_model: Width the features are projected to (the residual stream).
        pos_conv_kernel: Kernel of the convolutional positional embedding.
        pos_conv_groups: Groups of that convolution.
        pos_conv_norm: ``"weight_norm"`` (the conv weight is ``g * v / ||v||``, norm over everything
            but the kernel axis) or ``"batch_norm"`` (BatchNorm1d before a plain conv, some HuBERT configs).
        pos_conv_bn_eps: BatchNorm epsilon (``"batch_norm"`` only).
        spec_augment: Whether a learned ``masked_spec_embed`` exists and HF applies it to masked frames
            (``mask_time_indices``).
    """

    conv_dim: tuple[int, ...]
    conv_kernel: tuple[int, ...]
    conv_stride: tuple[int, ...]
    conv_bias: bool
    conv_norm: ConvNorm
    conv_act_fn: str
    proj_norm: NormConfig | None
    d_model: int
    pos_conv_kernel: int
    pos_conv_groups: int
    conv_norm_eps: float = 1e-5
    pos_conv_norm: PosConvNorm = "weight_norm"
    pos_conv_bn_eps: float = 1e-5
    spec_augment: bool = False

    def __post_init__(self) -> None:
        n = len(self.conv_dim)
        if n == 0 or len(self.conv_kernel) != n or len(self.conv_stride) != n:
            raise ValueError(
                f"conv_dim, conv_kernel and conv_stride must be non-empty and of equal length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}"
            )
        if any(k < 1 for k in self.conv_kernel) or any(s < 1 for s in self.conv_stride):
            raise ValueError(f"conv kernels and strides must be >= 1, got {self.conv_kernel}, {self.conv_stride}")
        if self.conv_norm not in ("group", "layer"):
            raise ValueError(f"conv_norm must be 'group' or 'layer', got {self.conv_norm!r}")
        if self.pos_conv_norm not in ("weight_norm", "batch_norm"):
            raise ValueError(f"pos_conv_norm must be 'weight_norm' or 'batch_norm', got {self.pos_conv_norm!r}")
        if self.d_model % self.pos_conv_groups != 0:
            raise ValueError(f"d_model {self.d_model} must be a multiple of pos_conv_groups {self.pos_conv_groups}")
        if self.conv_act_fn not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.conv_act_fn!r}; expected one of {ACTIVATIONS}")

    @property
    def hop_length(self) -> int:
        """Samples between consecutive frames (the product of the strides; 320 = 20 ms at 16 kHz)."""
        hop = 1
        for s in self.conv_stride:
            hop *= s
        return hop

    @property
    def receptive_field(self) -> int:
        """Samples that one output frame of the conv stack sees (400 = 25 ms for the standard stack)."""
        field = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            field = (field - 1) * s + k
        return field


@dataclass(frozen=True)
class CTCHeadConfig:
    """A linear CTC head: ``logits = resid_final @ W_U + b_U``.

    Attributes:
        d_vocab: Number of CTC labels (characters plus the blank).
        blank_id: Index of the CTC blank (HF uses ``config.pad_token_id``).
    """

    d_vocab: int
    blank_id: int = 0


@dataclass(frozen=True)
class QuantizerConfig:
    """wav2vec2 pre-training head: Gumbel product quantizer plus the two contrastive projections.

    Attributes:
        num_groups: Codebooks (``num_codevector_groups``).
        num_vars: Entries per codebook (``num_codevectors_per_group``).
        codevector_dim: Width of a concatenated quantized vector.
        proj_codevector_dim: Width both sides are projected to for the contrastive similarity.
        d_features: Width of the (normalised) conv features the quantizer reads.
    """

    num_groups: int
    num_vars: int
    codevector_dim: int
    proj_codevector_dim: int
    d_features: int

    def __post_init__(self) -> None:
        if self.codevector_dim % self.num_groups != 0:
            raise ValueError(f"codevector_dim {self.codevector_dim} must be a multiple of num_groups {self.num_groups}")


@dataclass(frozen=True)
class AudioEncoderConfig(_SingleStackDims):
    """A speech encoder (wav2vec2 / HuBERT): conv front end + transformer stack (+ optional heads).

    The two HF layouts differ only in where the norms sit, which ``stack.norm_position`` says:

    - ``"post"`` (``do_stable_layer_norm=False``, base checkpoints): ``embed_norm`` normalises
      ``projected + pos_conv`` before block 0; blocks are post-LN; no final norm.
    - ``"pre"`` (``do_stable_layer_norm=True``, large / lv60 checkpoints): ``projected + pos_conv`` enters
      block 0 unnormalised; blocks are pre-LN; ``stack.final_norm`` follows the last block.

    Attributes:
        architecture: HF architecture (informational).
        model_type: HF model type (informational).
        frontend: Conv front end.
        stack: Transformer blocks.
        embed_norm: Norm of ``projected + pos_conv`` (post-LN layout), else None.
        ctc_head: CTC head, if the checkpoint has one.
        quantizer: wav2vec2 pre-training quantizer and projections, if the checkpoint has them.
    """

    architecture: str
    model_type: str
    frontend: AudioFrontendConfig
    stack: StackConfig
    embed_norm: NormConfig | None = None
    ctc_head: CTCHeadConfig | None = None
    quantizer: QuantizerConfig | None = None

    family = "audio_encoder"

    def __post_init__(self) -> None:
        if self.frontend.d_model != self.stack.d_model:
            raise ValueError(f"frontend.d_model {self.frontend.d_model} must equal stack.d_model {self.stack.d_model}")
        pre = self.stack.norm_position == "pre"
        if pre and self.embed_norm is not None:
            raise ValueError("a pre-LN audio encoder has no embedding norm (its norm is the final one)")
        if not pre and self.embed_norm is None:
            raise ValueError("a post-LN audio encoder normalises projected + pos_conv: set embed_norm")

    @property
    def d_vocab(self) -> int | None:
        return None if self.ctc_head is None else self.ctc_head.d_vocab


@dataclass(frozen=True)
class UnembedConfig:
    """A linear language-model head: ``logits = (x * scale) @ W_U + b_U``.

    Attributes:
        tied: Whether ``W_U`` is the transpose of the token embedding (one parameter, not a copy).
        scale: Multiplier on the final residual before ``W_U``. T5 v1.0 rescales by ``d_model**-0.5``
            when its head is tied; T5 v1.1 / Flan-T5 / mT5 (untied head) and BART use ``1.0``.
        bias: Whether the logits have a bias (BART's ``final_logits_bias``).
    """

    tied: bool = True
    scale: float = 1.0
    bias: bool = False


DecoderShift = Literal["start_token", "wrap_last_token"]


@dataclass(frozen=True)
class EncoderDecoderConfig:
    """A sequence-to-sequence transformer (T5 family, BART, mBART).

    The token embedding is shared by the encoder and the decoder (and the head when tied) unless
    ``shared_embedding=False`` (Marian with ``share_encoder_decoder_embeddings=False``: the decoder has its
    own table, possibly of another vocabulary size, and a tied head reads it); ``encoder_embed`` /
    ``decoder_embed`` describe each side's positions and embedding norm.

    Attributes:
        architecture: The HF architecture the checkpoint came from (informational only).
        model_type: The HF ``model_type`` (informational only).
        encoder_embed: Encoder embedding settings (vocabulary, scale, learned positions, norm).
        encoder: Encoder block stack.
        decoder_embed: Decoder embedding settings; None for an encoder-only checkpoint.
        decoder: Decoder block stack (causal self-attention, cross-attention); None for an
            encoder-only checkpoint (``T5EncoderModel``).
        unembed: The LM head, or None when the checkpoint has none (``T5Model``, ``BartModel``).
        decoder_start_token_id: First decoder token of generation and of shifted targets.
        eos_token_ids: Tokens that end a generated sequence.
        pad_token_id: Padding token (also fed to finished sequences during batched generation).
        decoder_shift: How targets become decoder inputs: ``"start_token"`` (T5, BART:
            ``[start] + targets[:-1]``) or ``"wrap_last_token"`` (mBART: the last non-pad target token,
            the language id, moves to the front).
        shared_embedding: Whether encoder and decoder share one token embedding (False: the decoder
            has its own, of ``decoder_embed.d_vocab`` rows).
    """

    architecture: str
    model_type: str
    encoder_embed: EmbeddingConfig
    encoder: StackConfig
    decoder_embed: EmbeddingConfig | None = None
    decoder: StackConfig | None = None
    unembed: UnembedConfig | None = None
    decoder_start_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    decoder_shift: DecoderShift = "start_token"
    shared_embedding: bool = True

    family = "encoder_decoder"

    def __post_init__(self) -> None:
        if (self.decoder is None) != (self.decoder_embed is None):
            raise ValueError("decoder and decoder_embed must both be given (seq2seq) or both be None (encoder only)")
        if self.decoder is not None:
            assert self.decoder_embed is not None
            if not self.decoder.cross_attention:
                raise ValueError("the decoder stack of an encoder-decoder needs cross_attention=True")
            if not self.decoder.attn.causal:
                raise ValueError("the decoder stack of an encoder-decoder needs causal self-attention")
            if self.decoder.d_model != self.encoder.d_model:
                raise ValueError(
                    f"encoder and decoder widths differ ({self.encoder.d_model} vs {self.decoder.d_model})"
                )
            shared_fields = ("d_vocab", "scale", "pad_token_id") if self.shared_embedding else ()
            for field in shared_fields:
                if getattr(self.decoder_embed, field) != getattr(self.encoder_embed, field):
                    raise ValueError(f"encoder and decoder share one token embedding: their {field} must agree")
        if self.unembed is not None and self.decoder is None:
            raise ValueError("an LM head needs a decoder")
        if not self.shared_embedding and self.decoder is None:
            raise ValueError("shared_embedding=False describes a decoder's own embedding; this config has no decoder")
        if self.decoder_shift not in ("start_token", "wrap_last_token"):
            raise ValueError(f"decoder_shift must be 'start_token' or 'wrap_last_token', got {self.decoder_shift!r}")

    @property
    def d_model(self) -> int:
        return self.encoder.d_model

    @property
    def d_vocab(self) -> int:
        """Vocabulary of the encoder input (see ``d_vocab_out`` for the decoder and the head)."""
        return self.encoder_embed.d_vocab

    @property
    def d_vocab_out(self) -> int:
        """Vocabulary of the decoder input and of the logits."""
        return self.encoder_embed.d_vocab if self.decoder_embed is None else self.decoder_embed.d_vocab

    @property
    def n_layers(self) -> int:
        """Encoder depth (see ``n_decoder_layers`` for the decoder)."""
        return self.encoder.n_layers

    @property
    def n_decoder_layers(self) -> int:
        return 0 if self.decoder is None else self.decoder.n_layers

    @property
    def n_heads(self) -> int:
        return self.encoder.attn.n_heads

    @property
    def d_head(self) -> int:
        return self.encoder.attn.d_head


@dataclass(frozen=True)
class LogMelConfig:
    """Whisper's log-mel front end (HF ``WhisperFeatureExtractor``).

    Attributes:
        n_mels: Mel bins (80; 128 for large-v3 / turbo).
        sampling_rate: Expected sample rate in Hz.
        n_fft: STFT window (periodic Hann) and FFT size.
        hop_length: Samples between frames.
        chunk_length: Seconds every input is padded (or refused beyond) to.
    """

    n_mels: int = 80
    sampling_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    chunk_length: int = 30

    def __post_init__(self) -> None:
        for name in ("n_mels", "sampling_rate", "n_fft", "hop_length", "chunk_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_samples(self) -> int:
        """Samples in one padded chunk (480000 = 30 s at 16 kHz)."""
        return self.chunk_length * self.sampling_rate

    @property
    def n_frames(self) -> int:
        """Mel frames of one chunk (3000)."""
        return self.n_samples // self.hop_length


@dataclass(frozen=True)
class WhisperConfig:
    """Whisper: a log-mel + two-conv audio encoder and a text decoder with cross-attention.

    Attributes:
        architecture: HF architecture (informational).
        model_type: HF model type (informational).
        mel: Log-mel front end.
        n_audio_ctx: Encoder positions (``max_source_positions``; the mel input has twice as many frames).
        encoder: Encoder blocks (pre-LN, final norm).
        decoder_embed: Decoder token and learned position embeddings.
        decoder: Decoder blocks (pre-LN, causal, cross-attention, final norm).
        unembed: The LM head (``proj_out``, tied to the decoder embedding), or None (``WhisperModel``).
        decoder_start_token_id: ``<|startoftranscript|>``.
        eos_token_ids: ``<|endoftext|>``.
        pad_token_id: Padding token.
    """

    architecture: str
    model_type: str
    mel: LogMelConfig
    n_audio_ctx: int
    encoder: StackConfig
    decoder_embed: EmbeddingConfig
    decoder: StackConfig
    unembed: UnembedConfig | None = None
    decoder_start_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    family = "whisper"

    def __post_init__(self) -> None:
        if self.encoder.norm_position != "pre" or self.decoder.norm_position != "pre":
            raise ValueError("Whisper's encoder and decoder are pre-LN stacks")
        if not (self.decoder.cross_attention and self.decoder.attn.causal):
            raise ValueError("Whisper's decoder needs causal self-attention and cross-attention")
        if self.encoder.d_model != self.decoder.d_model:
            raise ValueError(f"encoder and decoder widths differ ({self.encoder.d_model} vs {self.decoder.d_model})")
        if self.n_audio_ctx < 1:
            raise ValueError(f"n_audio_ctx must be >= 1, got {self.n_audio_ctx}")

    @property
    def d_model(self) -> int:
        return self.encoder.d_model

    @property
    def d_vocab(self) -> int:
        return self.decoder_embed.d_vocab

    @property
    def n_layers(self) -> int:
        """Encoder depth (see ``n_decoder_layers``)."""
        return self.encoder.n_layers

    @property
    def n_decoder_layers(self) -> int:
        return self.decoder.n_layers

    @property
    def n_heads(self) -> int:
        return self.encoder.attn.n_heads

    @property
    def d_head(self) -> int:
        return self.encoder.attn.d_head
