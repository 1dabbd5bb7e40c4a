"""DistilBERT -> :class:`HookedEncoder`.

A post-LN BERT without token types or pooler, under other names (``q_lin``, ``sa_layer_norm``, ``ffn.lin1``...),
with every LayerNorm at ``eps=1e-12`` (hard-coded in HF). ``sinusoidal_pos_embds`` only changes how
HF *initialises* the position table, which is stored in the checkpoint like any weight; when a
checkpoint omits it, we rebuild the sinusoidal table as HF's initialisation does.

Heads: MLM (``vocab_transform`` -> ``config.activation`` -> ``vocab_layer_norm`` -> tied
``vocab_projector``), sequence classification (first token -> ``pre_classifier`` -> ReLU ->
``classifier``), token classification and question answering (``qa_outputs``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from encoderlens.convert.bertlike import BertLike, Classifier, Fields, MLMLayout, QuestionAnswering, register_bertlike
from encoderlens.convert.common import LayerNames
from encoderlens.convert.registry import require

ARCH = "distilbert"
EPS = 1e-12  # HF DistilBERT hard-codes this for every LayerNorm


def sinusoidal_table(n_pos: int, dim: int) -> Tensor:
    """HF DistilBERT's sinusoidal init: ``sin`` on even columns, ``cos`` on odd, ``pos / 10000^(2*(j//2)/dim)``."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def _missing_positions(hf: Any) -> Tensor:
    require(
        bool(getattr(hf, "sinusoidal_pos_embds", False)),
        ARCH,
        "sinusoidal_pos_embds",
        False,
        "a checkpoint holding embeddings.position_embeddings.weight (or sinusoidal_pos_embds=True)",
    )
    return sinusoidal_table(hf.max_position_embeddings, hf.dim)


SPEC = BertLike(
    name=ARCH,
    prefix="distilbert.",
    model_types=("distilbert",),
    architectures={
        "DistilBertModel": None,
        "DistilBertForMaskedLM": None,
        "DistilBertForSequenceClassification": Classifier(
            "sequence", "classifier", hidden="pre_classifier", hidden_act="relu"
        ),
        "DistilBertForTokenClassification": Classifier("token", "classifier"),
        "DistilBertForQuestionAnswering": QuestionAnswering(),
    },
    fields=Fields(
        d_model="dim",
        n_heads="n_heads",
        n_layers="n_layers",
        d_mlp="hidden_dim",
        act="activation",
        eps=EPS,
        n_token_types=None,
    ),
    handled=frozenset({"sinusoidal_pos_embds"}),
    # tie_weights_ is a legacy key of the released configs; HF ties by tie_word_embeddings
    ignored=frozenset({"dropout", "attention_dropout", "qa_dropout", "seq_classif_dropout", "tie_weights_"}),
    layer_names=LayerNames(
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        o="attention.out_lin",
        ln1="sa_layer_norm",
        mlp_in="ffn.lin1",
        mlp_out="ffn.lin2",
        ln2="output_layer_norm",
    ),
    layer_prefix="transformer.layer.",
    pooler=None,
    mlm=(
        MLMLayout(
            dense="vocab_transform",
            norm="vocab_layer_norm",
            decoder="vocab_projector.weight",
            biases=("vocab_projector.bias",),
        ),
    ),
    buffers=("position_ids",),
    missing_positions=_missing_positions,
)

convert = register_bertlike(SPEC)
