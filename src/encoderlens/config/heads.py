"""Text-encoder output heads: MLM head, classifier, sentence-transformers pooling."""

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
ClassifierInput = Literal["first_token", "pooler"]
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]


@dataclass(frozen=True)
class ClassifierHeadConfig:
    """A classification head: ``[dense -> act ->] linear``.

    Attributes:
        task: ``"sequence"`` (one prediction per text) or ``"token"`` (one per position).
        labels: Label names in logit order (HF ``config.id2label``).
        input: For sequence heads: ``"first_token"`` (the final residual at position 0, RoBERTa /
            ELECTRA / DistilBERT) or ``"pooler"`` (the model's tanh pooler, BERT / ALBERT).
            Token heads read every position.
        hidden_act: Activation of a hidden ``d_model x d_model`` dense layer before the output layer
            (RoBERTa ``tanh``, ELECTRA ``gelu``, DistilBERT ``relu``), or None for one linear layer.
        problem_type: How logits become predictions: softmax over labels (single label), a sigmoid per
            label (multi label) or raw scores (regression).
    """

    task: ClassifierTask
    labels: tuple[str, ...]
    input: ClassifierInput = "first_token"
    hidden_act: str | None = None
    problem_type: ProblemType = "single_label_classification"

    def __post_init__(self) -> None:
        if self.task not in ("sequence", "token"):
            raise ValueError(f"classifier task must be 'sequence' or 'token', got {self.task!r}")
        if self.input not in ("first_token", "pooler"):
            raise ValueError(f"classifier input must be 'first_token' or 'pooler', got {self.input!r}")
        if self.task == "token" and self.input != "first_token":
            raise ValueError("a token classifier reads every position; input='pooler' applies to sequence heads")
        if not self.labels:
            raise ValueError("a classifier needs at least one label")
        if self.hidden_act is not None and self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.hidden_act!r}; expected one of {ACTIVATIONS}")
        if self.problem_type not in ("single_label_classification", "multi_label_classification", "regression"):
            raise ValueError(f"unknown problem_type {self.problem_type!r}")

    @property
    def n_labels(self) -> int:
        return len(self.labels)


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
