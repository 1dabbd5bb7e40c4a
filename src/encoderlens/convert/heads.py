"""Head helpers shared by the text-encoder converters: classifier and QA configs and weights, the MLM unembedding.

Which head a checkpoint has comes from its HF architecture (``*ForSequenceClassification`` and
``*ForTokenClassification`` hold the same ``classifier.weight`` shape, so weights alone cannot tell
them apart); each converter lists its architectures explicitly. Labels come from ``config.id2label``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from encoderlens.config import (
    QA_LABELS,
    ClassifierHeadConfig,
    ClassifierInput,
    ClassifierTask,
    NormConfig,
    ProblemType,
    QAHeadConfig,
)
from encoderlens.convert.common import linear_weight
from encoderlens.convert.registry import WeightReader, require


def class_labels(hf: Any) -> tuple[str, ...]:
    """Label names in logit order from ``config.id2label`` (HF fills ``LABEL_i`` when unnamed)."""
    id2label = getattr(hf, "id2label", None) or {}
    n = getattr(hf, "num_labels", None) or len(id2label)
    return tuple(str(id2label.get(i, f"LABEL_{i}")) for i in range(n))


def problem_type(hf: Any, n_labels: int) -> ProblemType:
    """HF's rule: ``config.problem_type`` if set, else regression for one label, single-label otherwise."""
    declared = getattr(hf, "problem_type", None)
    if declared is not None:
        return declared  # type: ignore[no-any-return]
    return "regression" if n_labels == 1 else "single_label_classification"


def classifier_config(
    hf: Any, task: ClassifierTask, input: ClassifierInput = "first_token", hidden_act: str | None = None
) -> ClassifierHeadConfig:
    labels = class_labels(hf)
    return ClassifierHeadConfig(
        task=task, labels=labels, input=input, hidden_act=hidden_act, problem_type=problem_type(hf, len(labels))
    )


def qa_config(
    hf: Any, arch: str, architecture: str, hidden_act: str | None = None, hidden_norm: NormConfig | None = None
) -> QAHeadConfig:
    """The QA head of a ``*ForQuestionAnswering`` checkpoint, refusing any ``num_labels`` but 2.

    HF builds ``Linear(d_model, num_labels)`` and splits its output with ``split(1, dim=-1)`` into exactly
    ``start_logits, end_logits``: any other count fails in HF's own forward.

    Args:
        hf: The HF config (``num_labels`` / ``id2label`` are read).
        arch: The converter's name, for messages.
        architecture: The HF architecture, for messages.
        hidden_act, hidden_norm: The hidden layer before the output layer (ModernBERT), or None.
    """
    n = len(class_labels(hf))
    require(
        n == len(QA_LABELS),
        arch,
        f"num_labels (for {architecture})",
        n,
        "2: HF splits the QA logits into start and end, and its forward fails on any other count",
    )
    return QAHeadConfig(hidden_act=hidden_act, hidden_norm=hidden_norm)


def take_classifier(
    r: WeightReader, out: dict[str, Tensor], output: str, hidden: str | None = None, prefix: str = "classifier."
) -> None:
    """Take a head's linear layers: ``hidden`` (optional dense) and ``output`` (HF module names), into ``prefix``."""
    if hidden is not None:
        out[prefix + "W_hidden"] = linear_weight(r.take(hidden + ".weight"))
        out[prefix + "b_hidden"] = r.take(hidden + ".bias")
    out[prefix + "W"] = linear_weight(r.take(output + ".weight"))
    out[prefix + "b"] = r.take(output + ".bias")


def take_unembed(
    r: WeightReader,
    out: dict[str, Tensor],
    hf: Any,
    arch: str,
    decoder_weight: str,
    bias_keys: tuple[str, ...],
) -> bool:
    """Take the MLM decoder: tied to the word embeddings (``tie_word_embeddings``) or its own matrix.

    ``bias_keys`` lists where HF may store the output bias: the head's own bias first, then the
    decoder's (``lm_head.bias``, ``lm_head.decoder.bias``). HF ties the decoder bias to the head bias
    only when the embeddings are tied; untied, the decoder's own bias is what its forward adds. We take
    the copy HF would use and consume the others. Returns whether the unembedding is tied.
    """
    tied = bool(getattr(hf, "tie_word_embeddings", True))
    decoder = r.take_optional(decoder_weight)
    if tied:
        if decoder is not None and not decoder.equal(out["embed.W_E"]):
            raise ValueError(
                f"{arch} config says tie_word_embeddings=True but {decoder_weight} differs from the word "
                "embeddings; the checkpoint is inconsistent"
            )
    else:
        require(decoder is not None, arch, "tie_word_embeddings", False, f"a checkpoint holding {decoder_weight}")
        assert decoder is not None
        out["mlm_head.W_U_untied"] = linear_weight(decoder)
    biases = {k: r.take_optional(k) for k in bias_keys}
    order = bias_keys if tied else tuple(reversed(bias_keys))
    used = next((biases[k] for k in order if biases[k] is not None), None)
    if used is None:
        raise ValueError(f"{arch} checkpoint is missing the MLM output bias (one of {list(bias_keys)})")
    out["mlm_head.b_U"] = used
    return tied
