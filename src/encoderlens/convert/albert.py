"""ALBERT -> :class:`HookedEncoder`.

Factorised embeddings (width ``embedding_size``, always followed by ``embedding_hidden_mapping_in`` to
``hidden_size``) and shared layers: HF applies layer group ``int(i / (num_hidden_layers /
num_hidden_groups))`` at step ``i``. We build one block per step (``blocks.{i}``, each with its own hook
points) holding the group's parameter objects (``EncoderConfig.param_source``); the converter emits
weights for the first block of each group only.

``num_hidden_groups > 1`` is supported. ``inner_group_num > 1`` (several different layers inside a
group, used by no released checkpoint) is rejected.

Heads: MLM (``predictions``: dense to ``embedding_size`` -> ``hidden_act`` -> LayerNorm -> tied
decoder), pooler, sentence-order prediction (``AlbertForPreTraining``; pooler -> linear, exposed as
the sequence classifier), sequence classification (pooler -> linear), token classification and question
answering (``qa_outputs``).
"""

from __future__ import annotations

from typing import Any

from encoderlens.convert.bertlike import (
    BertLike,
    Classifier,
    LayerPlan,
    MLMLayout,
    QuestionAnswering,
    register_bertlike,
)
from encoderlens.convert.common import LayerNames
from encoderlens.convert.registry import require

ARCH = "albert"


def layer_groups(n_layers: int, n_groups: int) -> list[int]:
    """The layer group HF applies at each step (same float arithmetic as ``AlbertTransformer``)."""
    return [int(i / (n_layers / n_groups)) for i in range(n_layers)]


def _plan(hf: Any, n_layers: int) -> LayerPlan:
    n_groups = hf.num_hidden_groups
    require(hf.inner_group_num == 1, ARCH, "inner_group_num", hf.inner_group_num, "1")
    require(1 <= n_groups <= n_layers, ARCH, "num_hidden_groups", n_groups, f"1..num_hidden_layers={n_layers}")
    groups = layer_groups(n_layers, n_groups)
    owner = {g: groups.index(g) for g in range(n_groups)}
    sources = tuple((f"encoder.albert_layer_groups.{g}.albert_layers.0.", block) for g, block in owner.items())
    return LayerPlan(sources, param_source=tuple(owner[g] for g in groups))


SPEC = BertLike(
    name=ARCH,
    prefix="albert.",
    model_types=("albert",),
    architectures={
        "AlbertModel": None,
        "AlbertForMaskedLM": None,
        "AlbertForPreTraining": Classifier("sequence", "sop_classifier.classifier", input="pooler"),
        "AlbertForSequenceClassification": Classifier("sequence", "classifier", input="pooler"),
        "AlbertForTokenClassification": Classifier("token", "classifier"),
        "AlbertForQuestionAnswering": QuestionAnswering(),
    },
    handled=frozenset({"embedding_size", "num_hidden_groups", "inner_group_num"}),
    # options of the original TF ALBERT code that HF's AlbertModel never reads (released at neutral values)
    ignored=frozenset(
        {"classifier_dropout_prob", "down_scale_factor", "gap_size", "net_structure_type", "num_memory_blocks"}
        | {"layers_to_keep"}
    ),
    layer_names=LayerNames(
        q="attention.query",
        k="attention.key",
        v="attention.value",
        o="attention.dense",
        ln1="attention.LayerNorm",
        mlp_in="ffn",
        mlp_out="ffn_output",
        ln2="full_layer_layer_norm",
    ),
    embed_proj="encoder.embedding_hidden_mapping_in",
    embed_proj_always=True,
    pooler="pooler",
    mlm=(
        MLMLayout(
            dense="predictions.dense",
            norm="predictions.LayerNorm",
            decoder="predictions.decoder.weight",
            biases=("predictions.bias", "predictions.decoder.bias"),
        ),
    ),
    layer_plan=_plan,
)

convert = register_bertlike(SPEC)
