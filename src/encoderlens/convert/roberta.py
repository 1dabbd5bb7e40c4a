"""RoBERTa and XLM-RoBERTa -> :class:`HookedEncoder`.

BERT's layers under a ``roberta.`` prefix, with fairseq positions: only non-padding tokens
(``tokens != pad_token_id``) are counted, starting at ``pad_token_id + 1``, and padding tokens read the
padding row (``EmbeddingConfig.positions_skip_padding``). Token types are whatever ``type_vocab_size``
says (1 in released checkpoints: one all-zero segment embedding, still added).

Heads: MLM (``lm_head``: dense -> exact GELU -> LayerNorm -> tied decoder; HF hard-codes GELU here),
pooler, sequence classification (``classifier.dense`` -> tanh -> ``classifier.out_proj`` on the first
token), token classification and question answering (``qa_outputs``). :func:`roberta_like` is the spec CamemBERT and Data2VecText reuse.
"""

from __future__ import annotations

from encoderlens.convert.bertlike import BertLike, Classifier, MLMLayout, QuestionAnswering, register_bertlike

#: RoBERTa's MLM head (exact GELU whatever ``hidden_act`` says) and sequence classifier.
ROBERTA_MLM = MLMLayout(
    dense="lm_head.dense",
    norm="lm_head.layer_norm",
    decoder="lm_head.decoder.weight",
    biases=("lm_head.bias", "lm_head.decoder.bias"),
    act="gelu",
)
ROBERTA_SEQUENCE = Classifier("sequence", "classifier.out_proj", hidden="classifier.dense", hidden_act="tanh")
ROBERTA_TOKEN = Classifier("token", "classifier")


def roberta_like(hf_name: str, prefix: str, model_types: tuple[str, ...]) -> BertLike:
    """The spec of a RoBERTa-shaped architecture named ``{hf_name}Model``, ``{hf_name}ForMaskedLM``..."""
    return BertLike(
        prefix=prefix,
        model_types=model_types,
        architectures={
            f"{hf_name}Model": None,
            f"{hf_name}ForMaskedLM": None,
            f"{hf_name}ForSequenceClassification": ROBERTA_SEQUENCE,
            f"{hf_name}ForTokenClassification": ROBERTA_TOKEN,
            f"{hf_name}ForQuestionAnswering": QuestionAnswering(),
        },
        mlm=(ROBERTA_MLM,),
        fairseq_positions=True,
    )


ROBERTA = roberta_like("Roberta", "roberta.", ("roberta",))
XLM_ROBERTA = roberta_like("XLMRoberta", "roberta.", ("xlm-roberta",))

convert = register_bertlike(ROBERTA)
convert_xlm_roberta = register_bertlike(XLM_ROBERTA)
