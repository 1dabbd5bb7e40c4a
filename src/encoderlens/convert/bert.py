"""BERT (``BertModel``, ``BertForMaskedLM``, ``BertForPreTraining``, ``BertFor{Sequence,Token}Classification``,
``BertForQuestionAnswering``)
-> :class:`HookedEncoder`: the reference layout of :mod:`encoderlens.convert.bertlike`.

Heads are taken from what the checkpoint holds: an MLM head if ``cls.predictions.*`` exists, NSP if
``cls.seq_relationship.*`` exists, a pooler if ``pooler.*`` exists. Classification heads follow the HF
architecture (sequence: pooler -> linear; token: linear on every position), labels from ``id2label``;
question answering is ``qa_outputs``, a linear layer to start and end logits at every position.
"""

from __future__ import annotations

from encoderlens.convert.bertlike import BertLike, Classifier, MLMLayout, QuestionAnswering, register_bertlike

SPEC = BertLike(
    name="bert",
    prefix="bert.",
    model_types=("bert",),
    architectures={
        "BertModel": None,
        "BertForMaskedLM": None,
        "BertForPreTraining": None,
        "BertForSequenceClassification": Classifier("sequence", "classifier", input="pooler"),
        "BertForTokenClassification": Classifier("token", "classifier"),
        "BertForQuestionAnswering": QuestionAnswering(),
    },
    nsp="cls.seq_relationship",
    mlm=(
        MLMLayout(
            dense="cls.predictions.transform.dense",
            norm="cls.predictions.transform.LayerNorm",
            decoder="cls.predictions.decoder.weight",
            biases=("cls.predictions.bias", "cls.predictions.decoder.bias"),
        ),
    ),
)

convert = register_bertlike(SPEC)
