"""Analysis toolkit: activation and attribution patching, logit lens, direct contributions, head detectors,
sentence-similarity attribution and attention views. See docs/analysis.md.

Everything works on any encoderlens model through the model contract declared by
:class:`~encoderlens.models.base.HookedModel` (prepare an input, run it, the readout head, the residual
streams) and hook names; no module here knows about model families (see docs/architecture.md).
"""

from __future__ import annotations

from encoderlens.analysis.attention_flow import attention_flow, attention_rollout
from encoderlens.analysis.attribution import (
    attribute_attn_layers,
    attribute_block_outputs,
    attribute_heads,
    attribute_mlp,
    attribute_residual,
)
from encoderlens.analysis.circuit_ablation import ablate_edges, faithfulness
from encoderlens.analysis.circuit_graph import Graph, build_graph
from encoderlens.analysis.circuit_view import circuit_html
from encoderlens.analysis.circuits import EdgeScores, edge_attribution
from encoderlens.analysis.direct import Decomposition, component_norms, decompose, direct_logit_attribution
from encoderlens.analysis.families import Prepared, prepare
from encoderlens.analysis.gradients import quadrature
from encoderlens.analysis.heads import ALL_DETECTORS, head_scores, score_patterns, summarize
from encoderlens.analysis.html import HtmlView, page
from encoderlens.analysis.input_attribution import InputAttribution, attribute_input
from encoderlens.analysis.lens import LensResult, ctc_collapse, ctc_lens, head_fn, logit_lens
from encoderlens.analysis.neuron_view import neuron_view_html
from encoderlens.analysis.neurons import attribute_neurons, patch_neurons
from encoderlens.analysis.patching import (
    Target,
    check_compatible,
    embedding_noise_hook,
    log_prob,
    logit_diff,
    patch_attn_layers,
    patch_block_outputs,
    patch_heads,
    patch_mlp,
    patch_residual,
    run_patches,
)
from encoderlens.analysis.path_patching import frozen_hooks, head, path_patch, path_patch_heads
from encoderlens.analysis.results import Labelled
from encoderlens.analysis.sae import attribute_sae_features, patch_sae_features
from encoderlens.analysis.sequence_attribution import SequenceAttribution, attribute_sequence
from encoderlens.analysis.similarity import (
    Pooling,
    SentenceEncoder,
    SimilarityAttribution,
    attribute_similarity,
    pooling_from_checkpoint,
    similarity_by_layer,
)
from encoderlens.analysis.targets import (
    class_score,
    ctc_token,
    ctc_transcript,
    mask_fill,
    similarity,
    span_score,
    token_score,
)
from encoderlens.analysis.views import AttentionView, attention_html, model_view_html, render_attention_html

__all__ = [
    "ALL_DETECTORS",
    "InputAttribution",
    "EdgeScores",
    "Graph",
    "ablate_edges",
    "attribute_neurons",
    "build_graph",
    "circuit_html",
    "edge_attribution",
    "faithfulness",
    "frozen_hooks",
    "head",
    "patch_neurons",
    "path_patch",
    "path_patch_heads",
    "attention_flow",
    "attention_rollout",
    "SequenceAttribution",
    "attribute_input",
    "attribute_sequence",
    "class_score",
    "ctc_token",
    "ctc_transcript",
    "mask_fill",
    "quadrature",
    "similarity",
    "span_score",
    "token_score",
    "AttentionView",
    "Decomposition",
    "HtmlView",
    "Labelled",
    "LensResult",
    "Pooling",
    "Prepared",
    "SentenceEncoder",
    "SimilarityAttribution",
    "Target",
    "attention_html",
    "attribute_attn_layers",
    "attribute_block_outputs",
    "attribute_heads",
    "attribute_mlp",
    "attribute_residual",
    "attribute_sae_features",
    "attribute_similarity",
    "check_compatible",
    "component_norms",
    "ctc_collapse",
    "ctc_lens",
    "decompose",
    "direct_logit_attribution",
    "embedding_noise_hook",
    "head_fn",
    "head_scores",
    "log_prob",
    "logit_diff",
    "logit_lens",
    "model_view_html",
    "neuron_view_html",
    "page",
    "patch_attn_layers",
    "patch_block_outputs",
    "patch_heads",
    "patch_mlp",
    "patch_residual",
    "patch_sae_features",
    "pooling_from_checkpoint",
    "prepare",
    "render_attention_html",
    "run_patches",
    "score_patterns",
    "similarity_by_layer",
    "summarize",
]
