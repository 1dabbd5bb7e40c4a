"""wav2vec2 (``Wav2Vec2Model``, ``Wav2Vec2ForCTC``, ``Wav2Vec2ForPreTraining``) -> :class:`HookedAudioEncoder`.

Also holds the pieces HuBERT shares with wav2vec2 (:func:`audio_encoder_config`, :func:`convert_audio_body`).

Heads follow the weights present: a CTC head if ``lm_head.*`` exists; the pre-training quantizer if
``quantizer.*`` exists. ``Wav2Vec2ForPreTraining`` is converted whole: its quantizer, ``project_hid``
and ``project_q`` become :class:`~encoderlens.components.audio_heads.QuantizerHead` (eval-mode
argmax quantisation, ``return_type="pretraining"``), so no weight is dropped. The contrastive loss
(negative sampling, Gumbel noise) is training machinery and is not rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from encoderlens.config import (
    ACTIVATIONS,
    AttentionConfig,
    AudioEncoderConfig,
    AudioFrontendConfig,
    CTCHeadConfig,
    MLPConfig,
    NormConfig,
    QuantizerConfig,
    StackConfig,
)
from encoderlens.convert.common import LayerNames, linear_weight, take_layer
from encoderlens.convert.registry import WeightReader, check_config_keys, register, require

#: One encoder layer (the same names in the post-LN and the pre-LN "stable layer norm" layouts).
LAYER_NAMES = LayerNames(
    q="attention.q_proj",
    k="attention.k_proj",
    v="attention.v_proj",
    o="attention.out_proj",
    ln1="layer_norm",
    mlp_in="feed_forward.intermediate_dense",
    mlp_out="feed_forward.output_dense",
    ln2="final_layer_norm",
)

#: Wav2Vec2Config / HubertConfig keys :func:`audio_encoder_config` reads.
HANDLED_KEYS = frozenset(
    {
        "feat_extract_norm",
        "feat_extract_activation",
        "conv_dim",
        "conv_kernel",
        "conv_stride",
        "conv_bias",
        "num_feat_extract_layers",  # = len(conv_dim), checked by HF
        "feat_proj_layer_norm",
        "conv_pos_batch_norm",
        "num_conv_pos_embeddings",
        "num_conv_pos_embedding_groups",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "do_stable_layer_norm",
        "apply_spec_augment",
        "vocab_size",
        "pad_token_id",
        "add_adapter",
        "adapter_attn_dim",
        "num_codevector_groups",
        "num_codevectors_per_group",
        "codevector_dim",
        "proj_codevector_dim",
    }
)
#: Keys without effect on ``*Model`` / ``*ForCTC`` / ``*ForPreTraining`` in eval mode: dropout and
#: layer drop, SpecAugment masking (training only), losses, the adapter's sizes (``add_adapter`` is
#: refused), the classification / x-vector heads we do not convert, and legacy keys of the first releases.
IGNORED_KEYS = frozenset(
    {
        "activation_dropout",
        "attention_dropout",
        "feat_proj_dropout",
        "feat_quantizer_dropout",
        "feat_extract_dropout",
        "final_dropout",
        "hidden_dropout",
        "hidden_dropout_prob",
        "layerdrop",
        "mask_time_prob",
        "mask_time_length",
        "mask_time_min_masks",
        "mask_time_min_space",
        "mask_time_other",
        "mask_time_selection",
        "mask_feature_prob",
        "mask_feature_length",
        "mask_feature_min_masks",
        "mask_channel_prob",
        "mask_channel_length",
        "mask_channel_min_space",
        "mask_channel_other",
        "mask_channel_selection",
        "ctc_loss_reduction",
        "ctc_zero_infinity",
        "contrastive_logits_temperature",
        "diversity_loss_weight",
        "num_negatives",
        "adapter_kernel_size",
        "adapter_stride",
        "num_adapter_layers",
        "output_hidden_size",
        "classifier_proj_size",
        "use_weighted_layer_sum",
        "tdnn_dim",
        "tdnn_kernel",
        "tdnn_dilation",
        "xvector_output_dim",
        # fairseq-era keys of released configs that HF never reads
        "freeze_feat_extract_train",
        "quantize_targets",
        "sample_rate",
        "target_feature_length",
    }
)


def audio_encoder_config(
    hf: Any,
    arch: str,
    architecture: str,
    ctc: bool,
    quantizer: bool,
    spec_embed: bool,
    extra_keys: frozenset[str] = frozenset(),
) -> AudioEncoderConfig:
    """Map and check an HF ``Wav2Vec2Config`` / ``HubertConfig`` (their shared fields; ``extra_keys``: the
    caller's own handled keys, e.g. WavLM's position buckets)."""
    check_config_keys(hf, arch, HANDLED_KEYS | extra_keys, IGNORED_KEYS)
    require(hf.feat_extract_norm in ("group", "layer"), arch, "feat_extract_norm", hf.feat_extract_norm, "group, layer")
    require(not getattr(hf, "add_adapter", False), arch, "add_adapter", True, "False (no output adapter)")
    require(
        getattr(hf, "adapter_attn_dim", None) is None,
        arch,
        "adapter_attn_dim",
        getattr(hf, "adapter_attn_dim", None),
        "None (no attention adapters)",
    )
    require(hf.hidden_act in ACTIVATIONS, arch, "hidden_act", hf.hidden_act, ", ".join(ACTIVATIONS))
    require(
        hf.feat_extract_activation in ACTIVATIONS,
        arch,
        "feat_extract_activation",
        hf.feat_extract_activation,
        ", ".join(ACTIVATIONS),
    )
    require(
        hf.hidden_size % hf.num_attention_heads == 0,
        arch,
        "hidden_size",
        hf.hidden_size,
        "a multiple of num_attention_heads",
    )
    n_conv = len(hf.conv_dim)
    require(
        len(hf.conv_kernel) == n_conv and len(hf.conv_stride) == n_conv,
        arch,
        "conv_kernel/conv_stride",
        (tuple(hf.conv_kernel), tuple(hf.conv_stride)),
        "one kernel and one stride per conv_dim entry",
    )
    pre = bool(hf.do_stable_layer_norm)
    norm = NormConfig("layernorm", eps=hf.layer_norm_eps)
    d_model, n_heads = hf.hidden_size, hf.num_attention_heads
    feat_proj_ln = getattr(hf, "feat_proj_layer_norm", True)  # wav2vec2 always has it
    frontend = AudioFrontendConfig(
        conv_dim=tuple(int(c) for c in hf.conv_dim),
        conv_kernel=tuple(int(k) for k in hf.conv_kernel),
        conv_stride=tuple(int(s) for s in hf.conv_stride),
        conv_bias=bool(hf.conv_bias),
        conv_norm=hf.feat_extract_norm,
        conv_act_fn=hf.feat_extract_activation,
        proj_norm=norm if feat_proj_ln else None,
        d_model=d_model,
        pos_conv_kernel=int(hf.num_conv_pos_embeddings),
        pos_conv_groups=int(hf.num_conv_pos_embedding_groups),
        pos_conv_norm="batch_norm" if getattr(hf, "conv_pos_batch_norm", False) else "weight_norm",
        spec_augment=spec_embed and bool(getattr(hf, "apply_spec_augment", True)),
    )
    stack = StackConfig(
        n_layers=hf.num_hidden_layers,
        d_model=d_model,
        attn=AttentionConfig(n_heads=n_heads, d_head=d_model // n_heads),
        mlp=MLPConfig(d_mlp=hf.intermediate_size, act_fn=hf.hidden_act),
        norm=norm,
        norm_position="pre" if pre else "post",
        final_norm=pre,
    )
    ctc_cfg = None
    if ctc:
        require(hf.vocab_size is not None, arch, "vocab_size", None, "an int (CTC head)")
        blank = hf.pad_token_id if hf.pad_token_id is not None else 0
        ctc_cfg = CTCHeadConfig(d_vocab=int(hf.vocab_size), blank_id=int(blank))
    q_cfg = None
    if quantizer:
        q_cfg = QuantizerConfig(
            num_groups=int(hf.num_codevector_groups),
            num_vars=int(hf.num_codevectors_per_group),
            codevector_dim=int(hf.codevector_dim),
            proj_codevector_dim=int(hf.proj_codevector_dim),
            d_features=int(hf.conv_dim[-1]),
        )
    return AudioEncoderConfig(
        architecture=architecture,
        model_type=hf.model_type,
        frontend=frontend,
        stack=stack,
        embed_norm=None if pre else norm,
        ctc_head=ctc_cfg,
        quantizer=q_cfg,
    )


def convert_audio_body(r: WeightReader, cfg: AudioEncoderConfig, out: dict[str, Tensor]) -> None:
    """Convert the front end and encoder weights (prefix already stripped) shared by wav2vec2 and HuBERT."""
    fc = cfg.frontend
    for j in range(len(fc.conv_dim)):
        p = f"feature_extractor.conv_layers.{j}."
        o = f"frontend.conv.{j}."
        out[o + "W"] = r.take(p + "conv.weight")
        if fc.conv_bias:
            out[o + "b"] = r.take(p + "conv.bias")
        if fc.conv_norm == "layer" or j == 0:
            out[o + "norm.w"] = r.take(p + "layer_norm.weight")
            out[o + "norm.b"] = r.take(p + "layer_norm.bias")
    if fc.proj_norm is not None:
        out["frontend.projection.ln.w"] = r.take("feature_projection.layer_norm.weight")
        out["frontend.projection.ln.b"] = r.take("feature_projection.layer_norm.bias")
    out["frontend.projection.W"] = linear_weight(r.take("feature_projection.projection.weight"))
    out["frontend.projection.b"] = r.take("feature_projection.projection.bias")
    if fc.spec_augment:
        out["frontend.masked_spec_embed"] = r.take("masked_spec_embed")
    else:
        # present when HF's mask probabilities are > 0 but apply_spec_augment=False: HF never uses it either
        r.take_optional("masked_spec_embed")

    pc = "encoder.pos_conv_embed."
    if fc.pos_conv_norm == "weight_norm":
        g = r.take_optional(pc + "conv.parametrizations.weight.original0")
        v = r.take_optional(pc + "conv.parametrizations.weight.original1")
        if g is None or v is None:  # checkpoints saved with the legacy weight_norm API
            g, v = r.take(pc + "conv.weight_g"), r.take(pc + "conv.weight_v")
        out["frontend.pos_conv.W_g"] = g
        out["frontend.pos_conv.W_v"] = v
    else:
        out["frontend.pos_conv.W"] = r.take(pc + "conv.weight")
        out["frontend.pos_conv.bn_w"] = r.take(pc + "batch_norm.weight")
        out["frontend.pos_conv.bn_b"] = r.take(pc + "batch_norm.bias")
        out["frontend.pos_conv.bn_mean"] = r.take(pc + "batch_norm.running_mean")
        out["frontend.pos_conv.bn_var"] = r.take(pc + "batch_norm.running_var")
        r.take_optional(pc + "batch_norm.num_batches_tracked")  # training counter, no effect in eval mode
    out["frontend.pos_conv.b"] = r.take(pc + "conv.bias")

    # HF's encoder.layer_norm sits before block 0 (post-LN) or after the last block (pre-LN)
    ln_name = "embed_ln" if cfg.embed_norm is not None else "ln_final"
    out[f"{ln_name}.w"] = r.take("encoder.layer_norm.weight")
    out[f"{ln_name}.b"] = r.take("encoder.layer_norm.bias")

    for i in range(cfg.n_layers):
        take_layer(r, out, f"encoder.layers.{i}.", f"blocks.{i}.", cfg.n_heads, LAYER_NAMES)


def convert_audio_checkpoint(
    hf_config: Any, state_dict: Mapping[str, Tensor], arch: str, prefix: str, default_architecture: str
) -> tuple[AudioEncoderConfig, dict[str, Tensor]]:
    """Convert a wav2vec2-layout checkpoint whose base model lives under ``prefix`` (``wav2vec2.``, ``hubert.``)."""
    r = WeightReader(state_dict, arch)
    r.strip_prefix(prefix)
    ctc = r.has("lm_head.weight")
    quantizer = r.has("quantizer.codevectors")
    architecture = (getattr(hf_config, "architectures", None) or [default_architecture])[0]
    cfg = audio_encoder_config(
        hf_config, arch, architecture, ctc=ctc, quantizer=quantizer, spec_embed=r.has("masked_spec_embed")
    )
    out: dict[str, Tensor] = {}
    convert_audio_body(r, cfg, out)
    if ctc:
        out["ctc_head.W_U"] = linear_weight(r.take("lm_head.weight"))
        out["ctc_head.b_U"] = r.take("lm_head.bias")
    if cfg.quantizer is not None:
        q = cfg.quantizer
        codevectors = r.take("quantizer.codevectors")
        out["quantizer.codevectors"] = codevectors.reshape(q.num_groups, q.num_vars, -1).contiguous()
        out["quantizer.W_code"] = linear_weight(r.take("quantizer.weight_proj.weight"))
        out["quantizer.b_code"] = r.take("quantizer.weight_proj.bias")
        out["quantizer.W_hid"] = linear_weight(r.take("project_hid.weight"))
        out["quantizer.b_hid"] = r.take("project_hid.bias")
        out["quantizer.W_q"] = linear_weight(r.take("project_q.weight"))
        out["quantizer.b_q"] = r.take("project_q.bias")
    r.finish()
    return cfg, out


@register("Wav2Vec2Model", "Wav2Vec2ForCTC", "Wav2Vec2ForPreTraining", model_types=["wav2vec2"])
def convert(hf_config: Any, state_dict: Mapping[str, Tensor]) -> tuple[AudioEncoderConfig, dict[str, Tensor]]:
    """Convert a wav2vec2 checkpoint; heads follow the weights present."""
    require(
        not getattr(hf_config, "conv_pos_batch_norm", False),
        "wav2vec2",
        "conv_pos_batch_norm",
        True,
        "False (wav2vec2 uses a weight-norm positional conv)",
    )
    return convert_audio_checkpoint(hf_config, state_dict, "wav2vec2", "wav2vec2.", "Wav2Vec2Model")
