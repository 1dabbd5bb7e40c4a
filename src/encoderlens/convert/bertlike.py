"""The BERT-like converter, declared once: one :class:`BertLike` per architecture lists its differences.

BERT, RoBERTa, XLM-R, CamemBERT, Data2VecText, ELECTRA, ALBERT, DistilBERT and DeBERTa-v2 are
post-LN encoders with the same parts under different names: word (+ position, + token-type)
embeddings -> LayerNorm (-> projection), a stack of ``attention -> add & norm -> MLP -> add & norm``
layers, and heads (pooler, NSP, MLM ``dense -> act -> LayerNorm -> unembed``, classifiers, question
answering). A :class:`BertLike` names those parts and the HF config keys the architecture reads or
ignores; :func:`convert_bertlike` checks the config against that whitelist, builds the
:class:`EncoderConfig` and takes every weight, raising on any left over. Differences that are more
than names (RoBERTa's positions, ALBERT's shared layers, DeBERTa's attention) are small functions the
spec points to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from encoderlens.config import (
    ACTIVATIONS,
    AttentionConfig,
    ClassifierHeadConfig,
    EmbeddingConfig,
    EncoderConfig,
    MLMHeadConfig,
    MLPConfig,
    NormConfig,
    ProblemType,
    QAHeadConfig,
    StackConfig,
)
from encoderlens.convert.common import BERT_LAYER_NAMES, LayerNames, take_layer, take_linear, take_norm
from encoderlens.convert.heads import classifier_config, qa_config, take_classifier, take_unembed
from encoderlens.convert.registry import WeightReader, check_config_keys, register, require

#: Keys of ``BertConfig`` and its descendants that :func:`bertlike_config` reads.
BERT_HANDLED_KEYS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "tie_word_embeddings",
        "position_embedding_type",
        "is_decoder",
        "add_cross_attention",
    }
)

#: Keys of ``BertConfig`` and its descendants that change nothing in eval mode, and legacy keys of
#: the original Google / fairseq releases (the TF pooler options were never implemented by HF).
BERT_IGNORED_KEYS = frozenset(
    {
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "classifier_dropout",
        "directionality",
        "pooler_fc_size",
        "pooler_num_attention_heads",
        "pooler_num_fc_layers",
        "pooler_size_per_head",
        "pooler_type",
        "layer_norm_epsilon",  # not read by BERT-like HF models (they read layer_norm_eps)
    }
)


@dataclass(frozen=True)
class Fields:
    """HF config attribute names of the sizes (DistilBERT names them differently).

    ``eps`` is a key or a fixed value (DistilBERT hard-codes ``1e-12``); ``n_token_types`` None means
    no token-type embedding; ``d_head`` names a key that may set the head size explicitly (DeBERTa).
    """

    d_model: str = "hidden_size"
    n_heads: str = "num_attention_heads"
    n_layers: str = "num_hidden_layers"
    d_mlp: str = "intermediate_size"
    act: str = "hidden_act"
    eps: str | float = "layer_norm_eps"
    n_ctx: str = "max_position_embeddings"
    n_token_types: str | None = "type_vocab_size"
    d_head: str | None = None


@dataclass(frozen=True)
class MLMLayout:
    """Where an MLM head's parts live: ``dense -> act -> norm -> decoder (+ bias)``.

    ``decoder`` None: the head always multiplies by the word embeddings (DeBERTa's ``lm_predictions``).
    ``biases`` lists where HF may keep the output bias (see :func:`take_unembed`). ``act`` None: the
    config's activation; otherwise the one HF hard-codes (RoBERTa, ELECTRA: exact GELU).
    """

    dense: str
    norm: str
    decoder: str | None
    biases: tuple[str, ...]
    act: str | None = None


@dataclass(frozen=True)
class Classifier:
    """A classification head: ``output`` linear, optionally after a ``hidden`` linear + ``hidden_act``.

    ``hidden_act="config"`` uses the config's activation (ELECTRA's discriminator); ``hidden_act_key``
    names another config key holding it (DeBERTa's ``pooler_hidden_act``). Fixed ``labels`` (with their
    ``problem_type``) replace what the config says (ELECTRA's one ``replaced`` logit).
    """

    task: Literal["sequence", "token"]
    output: str
    hidden: str | None = None
    input: Literal["first_token", "pooler"] = "first_token"
    hidden_act: str | None = None
    labels: tuple[str, ...] | None = None
    problem_type: ProblemType = "single_label_classification"
    hidden_act_key: str | None = None


@dataclass(frozen=True)
class QuestionAnswering:
    """An extractive question-answering head: one linear layer ``output`` to start and end logits."""

    output: str = "qa_outputs"


#: The head an HF architecture adds to the base model (None: none beyond what the weights show).
Head = Classifier | QuestionAnswering | None


@dataclass(frozen=True)
class LayerPlan:
    """Which HF layer feeds which block: ``sources[j] = (hf_prefix, block)``; ``param_source`` as in
    :class:`EncoderConfig` (None: every block has its own weights)."""

    sources: tuple[tuple[str, int], ...]
    param_source: tuple[int, ...] | None = None


@dataclass(frozen=True)
class BertLike:
    """Declarative description of one BERT-like HF architecture.

    Attributes:
        name: Architecture name for messages (None: ``hf.model_type``, e.g. ``xlm-roberta``).
        prefix: The base model's prefix in the state dict (``bert.``).
        architectures: Every HF architecture name converted, -> its classifier or QA head (None: none).
        handled: HF config keys read beyond :data:`BERT_HANDLED_KEYS` (``fields`` keys are added).
        ignored: HF config keys without effect beyond :data:`BERT_IGNORED_KEYS`.
        fields: Names of the size keys.
        layer_names: Names inside one layer; ``layer_prefix``: where layer ``i`` lives.
        embed_norm: The embedding LayerNorm module.
        embed_proj: Projection ``d_embed -> d_model`` after the embedding norm, and whether it is
            always there (ALBERT) or only when ``embedding_size != hidden_size`` (ELECTRA).
        pooler, nsp: Pooler / next-sentence modules (None: the architecture has none).
        mlm: Possible MLM head layouts; the first whose dense weight is present is taken.
        buffers: State-dict suffixes that are buffers, dropped silently.
        dropped: State-dict prefixes HF itself ignores on load.
        fairseq_positions: Positions count non-padding tokens from ``pad_token_id + 1`` (RoBERTa).
        customize: ``(hf, cfg) -> cfg`` for differences in the config beyond names.
        extra_weights: ``(r, out, cfg)`` taking weights outside embeddings, layers and heads.
        extra_attn: ``cfg -> {ours: HF module}`` extra per-head attention projections per layer.
        layer_plan: ``(hf, n_layers) -> LayerPlan`` when layers are shared (ALBERT).
        missing_positions: ``hf -> table`` when a checkpoint may omit the position table (DistilBERT).
        model_types: HF ``model_type`` values converted when ``architectures`` names none of ours.
    """

    prefix: str
    architectures: Mapping[str, Head]
    name: str | None = None
    handled: frozenset[str] = frozenset()
    ignored: frozenset[str] = frozenset()
    fields: Fields = Fields()
    layer_names: LayerNames = BERT_LAYER_NAMES
    layer_prefix: str = "encoder.layer."
    embed_norm: str = "embeddings.LayerNorm"
    embed_proj: str | None = None
    embed_proj_always: bool = False
    pooler: str | None = "pooler.dense"
    nsp: str | None = None
    mlm: tuple[MLMLayout, ...] = ()
    buffers: tuple[str, ...] = ("position_ids", "embeddings.token_type_ids")
    dropped: tuple[str, ...] = ()
    fairseq_positions: bool = False
    customize: Callable[[Any, EncoderConfig], EncoderConfig] | None = None
    extra_weights: Callable[[WeightReader, dict[str, Tensor], EncoderConfig], None] | None = None
    extra_attn: Callable[[EncoderConfig], Mapping[str, str]] | None = None
    layer_plan: Callable[[Any, int], LayerPlan] | None = None
    missing_positions: Callable[[Any], Tensor] | None = None
    model_types: tuple[str, ...] = ()

    @property
    def default_architecture(self) -> str:
        return next(iter(self.architectures))


def register_bertlike(spec: BertLike) -> Callable[[Any, dict[str, Tensor]], tuple[EncoderConfig, dict[str, Tensor]]]:
    """Register :func:`convert_bertlike` with ``spec`` for its architectures and model types."""

    def convert(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[EncoderConfig, dict[str, Tensor]]:
        return convert_bertlike(spec, hf_config, state_dict)

    convert.__doc__ = f"Convert a {spec.name or spec.model_types[0]} checkpoint (see :class:`BertLike`)."
    return register(*spec.architectures, model_types=spec.model_types)(convert)


def _get(hf: Any, key: str) -> Any:
    return getattr(hf, key)


def _eps(hf: Any, fields: Fields) -> float:
    return float(fields.eps) if not isinstance(fields.eps, str) else float(_get(hf, fields.eps))


def bertlike_config(
    spec: BertLike,
    hf: Any,
    name: str,
    architecture: str,
    mlm: MLMLayout | None,
    tied: bool,
    pooler: bool,
    nsp: bool,
    classifier: ClassifierHeadConfig | None,
    qa_head: QAHeadConfig | None = None,
) -> EncoderConfig:
    """Map and check the config keys shared by BERT-like architectures (sizes, activation, norms)."""
    f = spec.fields
    pet = getattr(hf, "position_embedding_type", "absolute")
    require(pet in (None, "absolute"), name, "position_embedding_type", pet, "absolute")
    require(not getattr(hf, "is_decoder", False), name, "is_decoder", True, "False (encoder use)")
    require(not getattr(hf, "add_cross_attention", False), name, "add_cross_attention", True, "False")
    act = _get(hf, f.act)
    require(act in ACTIVATIONS, name, f.act, act, ", ".join(ACTIVATIONS))
    d_model, n_heads = _get(hf, f.d_model), _get(hf, f.n_heads)
    d_head = getattr(hf, f.d_head, None) if f.d_head else None
    if d_head is None:
        require(d_model % n_heads == 0, name, f.d_model, d_model, f"a multiple of {f.n_heads}={n_heads}")
        d_head = d_model // n_heads
    norm = NormConfig("layernorm", eps=_eps(hf, f))
    n_token_types = _get(hf, f.n_token_types) if f.n_token_types else 0
    cfg = EncoderConfig(
        architecture=architecture,
        model_type=hf.model_type,
        embed=EmbeddingConfig(
            d_vocab=hf.vocab_size,
            n_ctx=_get(hf, f.n_ctx),
            n_token_types=n_token_types,
            norm=norm,
            pad_token_id=getattr(hf, "pad_token_id", None),
        ),
        stack=StackConfig(
            n_layers=_get(hf, f.n_layers),
            d_model=d_model,
            attn=AttentionConfig(n_heads=n_heads, d_head=d_head),
            mlp=MLPConfig(d_mlp=_get(hf, f.d_mlp), act_fn=act),
            norm=norm,
            norm_position="post",
        ),
        mlm_head=MLMHeadConfig(act_fn=mlm.act or act, norm=norm, tied=tied) if mlm else None,
        pooler=pooler,
        nsp_head=nsp,
        classifier=classifier,
        qa_head=qa_head,
    )
    if spec.fairseq_positions:
        cfg = dataclasses.replace(cfg, embed=_fairseq_positions(hf, name, cfg.embed))
    return cfg


def _fairseq_positions(hf: Any, name: str, embed: EmbeddingConfig) -> EmbeddingConfig:
    pad: int | None = getattr(hf, "pad_token_id", None)
    if pad is None:
        raise ValueError(f"{name} converter needs pad_token_id in the config (positions are counted from it)")
    n_ctx = hf.max_position_embeddings
    require(n_ctx > pad + 1, name, "max_position_embeddings", n_ctx, f"> pad_token_id + 1 = {pad + 1}")
    return dataclasses.replace(embed, position_offset=pad + 1, positions_skip_padding=True)


def _classifier_config(hf: Any, name: str, head: Classifier, act: str) -> ClassifierHeadConfig:
    hidden_act = act if head.hidden_act == "config" else head.hidden_act
    if head.hidden_act_key is not None:
        hidden_act = _get(hf, head.hidden_act_key)
        require(hidden_act in ACTIVATIONS, name, head.hidden_act_key, hidden_act, ", ".join(ACTIVATIONS))
    if head.labels is not None:
        return ClassifierHeadConfig(
            task=head.task, labels=head.labels, hidden_act=hidden_act, problem_type=head.problem_type
        )
    return classifier_config(hf, head.task, head.input, hidden_act=hidden_act)


def _pick_architecture(hf: Any, spec: BertLike) -> str:
    archs = list(getattr(hf, "architectures", None) or [])
    return next((a for a in archs if a in spec.architectures), archs[0] if archs else spec.default_architecture)


def _keys(spec: BertLike) -> tuple[frozenset[str], frozenset[str]]:
    f = spec.fields
    size_keys = {f.d_model, f.n_heads, f.n_layers, f.d_mlp, f.act, f.n_ctx, f.n_token_types, f.d_head}
    if isinstance(f.eps, str):
        size_keys.add(f.eps)
    return BERT_HANDLED_KEYS | spec.handled | {k for k in size_keys if k}, BERT_IGNORED_KEYS | spec.ignored


def convert_bertlike(
    spec: BertLike, hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """Convert a checkpoint of the architecture ``spec`` describes.

    MLM, NSP and pooler follow the weights present; the classifier follows the HF architecture (a
    sequence and a token classifier hold the same weight shapes).
    """
    name = spec.name or hf_config.model_type
    check_config_keys(hf_config, name, *_keys(spec))
    r = WeightReader(state_dict, name, ignore=spec.buffers)
    r.strip_prefix(spec.prefix)
    for key in [k for k in r.remaining if spec.dropped and k.startswith(spec.dropped)]:
        r.take(key)  # a head HF itself drops on load
    arch = _pick_architecture(hf_config, spec)
    head = spec.architectures.get(arch)
    mlm = next((m for m in spec.mlm if r.has(m.dense + ".weight")), None)
    pooler = spec.pooler is not None and r.has(spec.pooler + ".weight")
    nsp = spec.nsp is not None and r.has(spec.nsp + ".weight")
    if (nsp or (isinstance(head, Classifier) and head.input == "pooler")) and not pooler:
        raise ValueError(f"{arch} checkpoint has a head reading the pooler but no pooler weights; it is incomplete")
    act = _get(hf_config, spec.fields.act)
    classifier = _classifier_config(hf_config, name, head, act) if isinstance(head, Classifier) else None
    qa = qa_config(hf_config, name, arch) if isinstance(head, QuestionAnswering) else None
    tied = bool(getattr(hf_config, "tie_word_embeddings", True)) if mlm is None or mlm.decoder else True
    cfg = bertlike_config(spec, hf_config, name, arch, mlm, tied, pooler, nsp, classifier, qa)
    if spec.embed_proj is not None:
        cfg = _with_projection(spec, hf_config, name, cfg, r.has(spec.embed_proj + ".weight"))
    plan = spec.layer_plan(hf_config, cfg.n_layers) if spec.layer_plan else _plain_plan(spec, cfg.n_layers)
    if plan.param_source is not None:
        cfg = dataclasses.replace(cfg, param_source=plan.param_source)
    if spec.customize is not None:
        cfg = spec.customize(hf_config, cfg)

    out: dict[str, Tensor] = {}
    _take_embeddings(spec, hf_config, r, out, cfg)
    extra_attn = spec.extra_attn(cfg) if spec.extra_attn else None
    for src, block in plan.sources:
        take_layer(r, out, src, f"blocks.{block}.", cfg.n_heads, spec.layer_names, extra_attn)
    if spec.extra_weights is not None:
        spec.extra_weights(r, out, cfg)
    if pooler:
        assert spec.pooler is not None
        take_linear(r, out, spec.pooler, "pooler.{}_pool")
    if nsp:
        assert spec.nsp is not None
        take_linear(r, out, spec.nsp, "nsp_head.{}")
    if isinstance(head, Classifier):
        take_classifier(r, out, head.output, hidden=head.hidden)
    elif isinstance(head, QuestionAnswering):
        take_classifier(r, out, head.output, prefix="qa_head.")
    if mlm is not None:
        _take_mlm(r, out, hf_config, name, mlm)
    r.finish()
    return cfg, out


def _plain_plan(spec: BertLike, n_layers: int) -> LayerPlan:
    return LayerPlan(tuple((f"{spec.layer_prefix}{i}.", i) for i in range(n_layers)))


def _with_projection(spec: BertLike, hf: Any, name: str, cfg: EncoderConfig, present: bool) -> EncoderConfig:
    d_embed = hf.embedding_size
    expected = spec.embed_proj_always or d_embed != cfg.d_model
    if present != expected:
        raise ValueError(
            f"{name} checkpoint {'has' if present else 'lacks'} {spec.embed_proj} weights but embedding_size="
            f"{d_embed} and hidden_size={cfg.d_model}; the checkpoint does not match its config"
        )
    if not present:
        return cfg
    return dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, d_embed=d_embed, project=True))


def _take_embeddings(spec: BertLike, hf: Any, r: WeightReader, out: dict[str, Tensor], cfg: EncoderConfig) -> None:
    out["embed.W_E"] = r.take("embeddings.word_embeddings.weight")
    if cfg.embed.n_ctx:
        key = "embeddings.position_embeddings.weight"
        table = r.take_optional(key) if spec.missing_positions else r.take(key)
        out["pos_embed.W_pos"] = table if table is not None else spec.missing_positions(hf)  # type: ignore[misc]
    if cfg.embed.n_token_types:
        out["token_type_embed.W_token_type"] = r.take("embeddings.token_type_embeddings.weight")
    take_norm(r, out, spec.embed_norm, "embed_ln")
    if cfg.embed.project:
        assert spec.embed_proj is not None
        take_linear(r, out, spec.embed_proj, "embed_proj.{}")


def _take_mlm(r: WeightReader, out: dict[str, Tensor], hf: Any, name: str, mlm: MLMLayout) -> None:
    take_linear(r, out, mlm.dense, "mlm_head.{}_transform")
    take_norm(r, out, mlm.norm, "mlm_head.ln")
    if mlm.decoder is None:  # always the word embeddings
        out["mlm_head.b_U"] = r.take(mlm.biases[0])
    else:
        take_unembed(r, out, hf, name, mlm.decoder, mlm.biases)
