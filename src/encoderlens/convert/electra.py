"""ELECTRA (discriminator and generator) -> :class:`HookedEncoder`.

BERT's embeddings and layers under an ``electra.`` prefix. The embeddings have width
``embedding_size``; when it differs from ``hidden_size`` a linear ``embeddings_project`` maps them to
the residual stream (``EmbeddingConfig.project``, hook ``hook_embed_pre_proj`` before it).

Heads:

- ``ElectraForPreTraining`` (the discriminator): replaced-token detection, dense -> ``hidden_act`` ->
  one logit per token. It is exposed as a token classifier with one label, ``"replaced"``
  (multi-label: ``logit > 0`` means replaced), so ``return_type="classification"`` gives
  ``(batch, pos, 1)``; HF's ``logits`` are that tensor's ``[..., 0]``.
- ``ElectraForMaskedLM`` (the generator): dense to ``embedding_size`` -> GELU -> LayerNorm -> tied decoder.
- ``ElectraForSequenceClassification``: first token -> dense -> GELU -> out_proj (HF hard-codes GELU).
- ``ElectraForTokenClassification``: linear on every position.
- ``ElectraForQuestionAnswering``: ``qa_outputs``, linear to start and end logits on every position.
"""

from __future__ import annotations

from encoderlens.convert.bertlike import BertLike, Classifier, MLMLayout, QuestionAnswering, register_bertlike

SPEC = BertLike(
    name="electra",
    prefix="electra.",
    model_types=("electra",),
    architectures={
        "ElectraModel": None,
        "ElectraForMaskedLM": None,
        "ElectraForPreTraining": Classifier(
            "token",
            "discriminator_predictions.dense_prediction",
            hidden="discriminator_predictions.dense",
            hidden_act="config",
            labels=("replaced",),
            problem_type="multi_label_classification",
        ),
        "ElectraForSequenceClassification": Classifier(
            "sequence", "classifier.out_proj", hidden="classifier.dense", hidden_act="gelu"
        ),
        "ElectraForTokenClassification": Classifier("token", "classifier"),
        "ElectraForQuestionAnswering": QuestionAnswering(),
    },
    handled=frozenset({"embedding_size"}),
    # the sequence-summary options of ElectraConfig are read by no ELECTRA model class; generator_size is
    # a pre-training hyperparameter of the original ELECTRA code that some released configs carry
    ignored=frozenset(
        {"summary_type", "summary_use_proj", "summary_activation", "summary_last_dropout", "generator_size"}
    ),
    embed_proj="embeddings_project",
    pooler=None,
    mlm=(
        MLMLayout(
            dense="generator_predictions.dense",
            norm="generator_predictions.LayerNorm",
            decoder="generator_lm_head.weight",
            biases=("generator_lm_head.bias",),
            act="gelu",
        ),
    ),
)

convert = register_bertlike(SPEC)
