"""Text-encoder output heads: MLM head, classifier, question answering, sentence-transformers pooling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from encoderlens.config.attention import ACTIVATIONS, NormConfig


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
ClassifierInput = Literal["first_token", "pooler", "mean"]
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]


def _check_hidden(hidden_act: str | None, hidden_norm: NormConfig | None) -> None:
    if hidden_act is not None and hidden_act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {hidden_act!r}; expected one of {ACTIVATIONS}")
    if hidden_norm is not None and hidden_act is None:
        raise ValueError("hidden_norm normalises the hidden layer's output; it needs a hidden layer (hidden_act)")


@dataclass(frozen=True)
class ClassifierHeadConfig:
    """A classification head: ``[norm(act(dense(x))) ->] linear``.

    Attributes:
        task: ``"sequence"`` (one prediction per text) or ``"token"`` (one per position).
        labels: Label names in logit order (HF ``config.id2label``).
        input: For sequence heads: ``"first_token"`` (the final residual at position 0, RoBERTa /
            ELECTRA / DistilBERT / ModernBERT ``classifier_pooling="cls"``), ``"pooler"`` (the model's
            tanh pooler, BERT / ALBERT) or ``"mean"`` (the mean of the final residual over real tokens,
            ModernBERT ``classifier_pooling="mean"``). Token heads read every position.
        hidden_act: Activation of a hidden ``d_model x d_model`` dense layer before the output layer
            (RoBERTa ``tanh``, ELECTRA ``gelu``, DistilBERT ``relu``, ModernBERT ``classifier_activation``),
            or None for one linear layer.
        hidden_norm: Norm after the hidden layer's activation (ModernBERT's prediction head), or None.
        problem_type: How logits become predictions: softmax over labels (single label), a sigmoid per
            label (multi label) or raw scores (regression).
    """

    task: ClassifierTask
    labels: tuple[str, ...]
    input: ClassifierInput = "first_token"
    hidden_act: str | None = None
    problem_type: ProblemType = "single_label_classification"
    hidden_norm: NormConfig | None = None

    def __post_init__(self) -> None:
        if self.task not in ("sequence", "token"):
            raise ValueError(f"classifier task must be 'sequence' or 'token', got {self.task!r}")
        if self.input not in ("first_token", "pooler", "mean"):
            raise ValueError(f"classifier input must be 'first_token', 'pooler' or 'mean', got {self.input!r}")
        if self.task == "token" and self.input != "first_token":
            raise ValueError(f"a token classifier reads every position; input={self.input!r} applies to sequence heads")
        if not self.labels:
            raise ValueError("a classifier needs at least one label")
        _check_hidden(self.hidden_act, self.hidden_norm)
        if self.problem_type not in ("single_label_classification", "multi_label_classification", "regression"):
            raise ValueError(f"unknown problem_type {self.problem_type!r}")

    @property
    def n_labels(self) -> int:
        return len(self.labels)


#: The outputs of a question-answering head, in logit order (HF splits its two logits in this order).
QA_LABELS = ("start", "end")


@dataclass(frozen=True)
class QAHeadConfig:
    """An extractive question-answering head: ``[norm(act(dense(x))) ->] linear`` to two logits per position.

    The two logits of position ``p`` score ``p`` as the answer span's start and as its end
    (:data:`QA_LABELS`); HF's ``*ForQuestionAnswering`` returns them split, as ``start_logits`` and
    ``end_logits``. Every BERT-like QA head is one linear layer (``qa_outputs``); ModernBERT's reads its
    prediction head (dense -> ``classifier_activation`` -> LayerNorm) first.

    Attributes:
        hidden_act: Activation of a hidden ``d_model x d_model`` dense layer before the output layer, or None.
        hidden_norm: Norm after the hidden layer's activation, or None.
    """

    hidden_act: str | None = None
    hidden_norm: NormConfig | None = None

    def __post_init__(self) -> None:
        _check_hidden(self.hidden_act, self.hidden_norm)

    @property
    def labels(self) -> tuple[str, ...]:
        return QA_LABELS

    @property
    def n_labels(self) -> int:
        return len(QA_LABELS)


#: Sentence-transformers pooling modes, in the order they are concatenated when several are set.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: Activations of sentence-transformers ``Dense`` layers (``Tanh``, ``Identity``, ``ReLU``, ``GELU``).
DENSE_ACTIVATIONS = ("tanh", "identity", "relu", "gelu")


@dataclass(frozen=True)
class SentenceDenseConfig:
    """A sentence-transformers ``Dense`` layer after the pooling: ``y = act(x @ W + b)``.

    Attributes:
        in_features: Input size (the pooled size for the first layer).
        out_features: Output size.
        bias: Whether the layer has a bias.
        activation: One of :data:`DENSE_ACTIVATIONS`.
    """

    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"Dense sizes must be positive, got in={self.in_features} out={self.out_features}")
        if self.activation not in DENSE_ACTIVATIONS:
            raise ValueError(f"Dense activation must be one of {DENSE_ACTIVATIONS}, got {self.activation!r}")


@dataclass(frozen=True)
class SentencePoolingConfig:
    """Sentence embedding as a sentence-transformers checkpoint declares it (``modules.json``, ``1_Pooling``).

    Attributes:
        modes: Pooling modes (see :data:`POOLING_MODES`); several are concatenated in this order.
        normalize: Whether a ``Normalize`` module (L2 normalisation) follows the pooling.
        max_seq_length: Texts are truncated to this many tokens (``sentence_bert_config.json``), or None.
        do_lower_case: Whether texts are lower-cased before tokenisation.
        dense: ``Dense`` layers applied after the pooling and before the normalisation, in order.
    """

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    dense: tuple[SentenceDenseConfig, ...] = ()

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError("sentence pooling needs at least one mode")
        bad = [m for m in self.modes if m not in POOLING_MODES]
        if bad:
            raise ValueError(f"unknown sentence pooling mode(s) {bad}; expected some of {POOLING_MODES}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be positive, got {self.max_seq_length}")
        for a, b in zip(self.dense, self.dense[1:]):
            if a.out_features != b.in_features:
                raise ValueError(
                    f"Dense layers do not chain: one gives {a.out_features} features, the next expects {b.in_features}"
                )
