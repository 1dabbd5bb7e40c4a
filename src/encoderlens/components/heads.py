"""Output heads: masked-LM head, tanh pooler, next-sentence classifier, classification and question-answering
heads, sentence pooling."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.components.embed import Embed
from encoderlens.components.mlp import get_activation
from encoderlens.components.norm import make_norm
from encoderlens.components.vocab_projection import vocab_projection
from encoderlens.config import (
    ClassifierHeadConfig,
    MLMHeadConfig,
    NormConfig,
    QAHeadConfig,
    SentenceDenseConfig,
    SentencePoolingConfig,
    UnembedConfig,
)
from encoderlens.hooks import HookPoint


class MLMHead(nn.Module):
    """The masked-LM head's transform ``LN(act(x @ W_transform + b_transform))``; :meth:`logits` adds ``@ W_U + b_U``.

    As TransformerLens's ``BertMLMHead``, calling the head gives the transformed residual; the
    vocabulary projection is the model's ``unembed`` (:class:`MLMUnembed`), whose weights live here.
    When tied, ``W_U`` is the transpose of the token embedding (one parameter, not a copy). The
    transform maps ``d_model`` to the token-embedding width (``d_embed``, smaller than ``d_model`` in
    ALBERT and the ELECTRA generator), which is what ``W_U`` reads.
    Hook: ``hook_transformed`` (the normalised transform, what ``W_U`` reads).
    """

    def __init__(self, d_model: int, d_vocab: int, cfg: MLMHeadConfig, embed: Embed) -> None:
        super().__init__()
        self.cfg = cfg
        self.act = get_activation(cfg.act_fn)
        d_embed = embed.W_E.shape[1]
        self.W_transform = nn.Parameter(torch.empty(d_model, d_embed))
        self.b_transform = nn.Parameter(torch.zeros(d_embed))
        self.ln = make_norm(d_embed, cfg.norm)
        # a list keeps the shared embedding from being registered twice as a submodule
        self._embed = [embed] if cfg.tied else []  # read only when tied (placement follows the reference)
        self.W_U_untied = None if cfg.tied else nn.Parameter(torch.empty(d_embed, d_vocab))
        self.b_U = nn.Parameter(torch.zeros(d_vocab))
        self.hook_transformed = HookPoint()

    @property
    def W_U(self) -> Float[Tensor, "d_embed d_vocab"]:
        return self._embed[0].W_E.T if self.W_U_untied is None else self.W_U_untied

    def transform(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_embed"]:
        return self.hook_transformed(self.ln(self.act(F.linear(x, self.W_transform.t(), self.b_transform))))

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_embed"]:
        """The transformed residual (TransformerLens's ``mlm_head``); :meth:`logits` for the vocabulary logits."""
        return self.transform(x)

    def logits(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Vocabulary logits: ``transform(x) @ W_U + b_U`` (the whole head, what the logit lens applies)."""
        # through __call__: a device_map moves x to the head first
        return vocab_projection(self(x), self.W_U, self.b_U)


class MLMUnembed(nn.Module):
    """The vocabulary projection ``x @ W_U + b_U`` of an :class:`MLMHead` (TransformerLens's ``unembed``).

    Holds no parameters of its own: ``W_U`` and ``b_U`` are the head's (checkpoint names unchanged).
    """

    def __init__(self, head: MLMHead) -> None:
        super().__init__()
        self._head = [head]

    @property
    def W_U(self) -> Float[Tensor, "d_embed d_vocab"]:
        return self._head[0].W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        return self._head[0].b_U

    def forward(self, x: Float[Tensor, "... d_embed"]) -> Float[Tensor, "... d_vocab"]:
        # one matmul with the bias fused in, into cache-line-aligned rows (see vocab_projection)
        return vocab_projection(x, self.W_U, self.b_U)


class Pooler(nn.Module):
    """``pooled = tanh(x[:, 0] @ W_pool + b_pool)``. Hook: ``hook_pooled``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.W_pool = nn.Parameter(torch.empty(d_model, d_model))
        self.b_pool = nn.Parameter(torch.zeros(d_model))
        self.hook_pooled = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        return self.hook_pooled(torch.tanh(F.linear(x[:, 0], self.W_pool.t(), self.b_pool)))


class NSPHead(nn.Module):
    """Next-sentence prediction: ``pooled @ W + b`` -> logits ``(is_next, is_random)``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(d_model, 2))
        self.b = nn.Parameter(torch.zeros(2))

    def forward(self, pooled: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch 2"]:
        return pooled @ self.W + self.b


class _LinearHead(nn.Module):
    """``[norm(act(x @ W_hidden + b_hidden)) ->] x @ W + b`` on the last axis; shared by the classifier and QA heads.

    Hooks: ``hook_hidden`` (after the hidden layer's activation; only when the head has one), the norm's
    hooks (``ln.hook_scale | hook_normalized``; only when it has one) and ``hook_logits``.
    """

    def __init__(self, d_model: int, n_out: int, hidden_act: str | None, hidden_norm: NormConfig | None) -> None:
        super().__init__()
        has_hidden = hidden_act is not None
        self.act = get_activation(hidden_act) if hidden_act is not None else None
        self.W_hidden = nn.Parameter(torch.empty(d_model, d_model)) if has_hidden else None
        self.b_hidden = nn.Parameter(torch.zeros(d_model)) if has_hidden else None
        self.hook_hidden = HookPoint() if has_hidden else None
        self.ln = make_norm(d_model, hidden_norm) if hidden_norm is not None else None
        self.W = nn.Parameter(torch.empty(d_model, n_out))
        self.b = nn.Parameter(torch.zeros(n_out))
        self.hook_logits = HookPoint()

    def forward(self, x: Float[Tensor, "*batch_pos d_model"]) -> Float[Tensor, "*batch_pos n_labels"]:
        if self.W_hidden is not None:
            assert self.act is not None and self.hook_hidden is not None and self.b_hidden is not None
            x = self.hook_hidden(self.act(x @ self.W_hidden + self.b_hidden))
            if self.ln is not None:
                x = self.ln(x)
        return self.hook_logits(x @ self.W + self.b)


class ClassifierHead(_LinearHead):
    """Sequence or token classification: ``[norm(act(x @ W_hidden + b_hidden)) ->] x @ W + b``.

    A token head reads every position. A sequence head reads one vector per text: the model's pooler
    output (``input="pooler"``, which the model passes in), or what :meth:`pool` takes from the final
    residual stream: position 0 (``"first_token"``) or the mean over real tokens (``"mean"``).

    Hooks: ``hook_pooled`` (sequence heads not reading the pooler: the vector the head reads),
    ``hook_hidden`` (after the hidden layer's activation; only when the head has one), ``ln.hook_scale |
    hook_normalized`` (only with a hidden norm, ModernBERT) and ``hook_logits``.
    """

    def __init__(self, d_model: int, cfg: ClassifierHeadConfig) -> None:
        super().__init__(d_model, cfg.n_labels, cfg.hidden_act, cfg.hidden_norm)
        self.cfg = cfg
        self.hook_pooled = HookPoint() if cfg.task == "sequence" and cfg.input != "pooler" else None

    def pool(
        self, x: Float[Tensor, "batch pos d_model"], attention_mask: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch d_model"]:
        """The vector a sequence head reads: ``x[:, 0]``, or ``sum(x * mask) / sum(mask)`` over positions (as HF)."""
        if self.hook_pooled is None:
            raise ValueError(
                f"pool applies to sequence heads reading the residual stream; this head is a {self.cfg.task} head "
                f"with input={self.cfg.input!r}"
            )
        if self.cfg.input == "mean":
            m = attention_mask.to(x.device)
            summed = torch.where(m.bool()[..., None], x, x.new_zeros(())).sum(dim=1)
            return self.hook_pooled(summed / m.sum(dim=1, keepdim=True).to(x.dtype))
        return self.hook_pooled(x[:, 0])

    def forward(self, x: Float[Tensor, "*batch_pos d_model"]) -> Float[Tensor, "*batch_pos n_labels"]:
        """Classify ``x``: ``(batch, d_model)`` for a sequence head, ``(batch, pos, d_model)`` for a token head."""
        return super().forward(x)


class QAHead(_LinearHead):
    """Extractive question answering: ``[norm(act(x @ W_hidden + b_hidden)) ->] x @ W + b`` at every position.

    Gives ``(batch, pos, 2)`` logits: ``[..., 0]`` scores each position as the answer's start, ``[..., 1]``
    as its end (HF's ``start_logits`` / ``end_logits``, which HF splits from this same tensor).

    Hooks: ``hook_logits`` (the two logits), and ``hook_hidden`` / ``ln.*`` where the head has a hidden
    layer (ModernBERT).
    """

    def __init__(self, d_model: int, cfg: QAHeadConfig) -> None:
        super().__init__(d_model, cfg.n_labels, cfg.hidden_act, cfg.hidden_norm)
        self.cfg = cfg

    def forward(self, x: Float[Tensor, "*batch_pos d_model"]) -> Float[Tensor, "*batch_pos 2"]:
        return super().forward(x)


_DENSE_ACTS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "identity": lambda x: x,
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
}


def dense_activation(name: str) -> Callable[[Tensor], Tensor]:
    """The function of a :data:`~encoderlens.config.DENSE_ACTIVATIONS` name (sentence-transformers ``Dense``)."""
    try:
        return _DENSE_ACTS[name]
    except KeyError:
        raise ValueError(f"Dense activation must be one of {sorted(_DENSE_ACTS)}, got {name!r}") from None


class SentenceDense(nn.Module):
    """A sentence-transformers ``Dense`` layer: ``y = act(x @ W + b)``.

    Hooks: ``hook_pre`` (``x @ W + b``) and ``hook_post`` (after the activation).
    """

    def __init__(self, cfg: SentenceDenseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.act = dense_activation(cfg.activation)
        self.W = nn.Parameter(torch.empty(cfg.in_features, cfg.out_features))
        self.b = nn.Parameter(torch.zeros(cfg.out_features)) if cfg.bias else None
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_out"]:
        y = x @ self.W
        if self.b is not None:
            y = y + self.b
        return self.hook_post(self.act(self.hook_pre(y)))


class SentencePooler(nn.Module):
    """Sentence embedding as sentence-transformers computes it: pool the final residual over real tokens.

    Modes (concatenated in ``cfg.modes`` order): ``cls`` (first attended token), ``max``, ``mean``,
    ``mean_sqrt_len_tokens`` (sum / sqrt(length)), ``weightedmean`` (position-weighted mean, weights
    start at 1 on the first attended token), ``lasttoken`` (last attended token). Then the ``Dense``
    layers (``dense.0``, ``dense.1``...) and L2 normalisation if ``cfg.normalize``.

    Hooks: ``hook_pooled`` (the pooled vector, before any Dense layer), ``dense.{i}.hook_pre`` /
    ``dense.{i}.hook_post`` per Dense layer, and ``hook_normalized`` (only when the checkpoint normalises).
    """

    def __init__(self, cfg: SentencePoolingConfig, d_model: int | None = None) -> None:
        """Build the pooler.

        Args:
            cfg: Modes, Dense layers and normalisation.
            d_model: Width of the pooled residual; checked against the first Dense layer's input.
        """
        super().__init__()
        self.cfg = cfg
        if cfg.dense and d_model is not None and cfg.dense[0].in_features != d_model * len(cfg.modes):
            raise ValueError(
                f"the first Dense layer expects {cfg.dense[0].in_features} features, but pooling {cfg.modes} of a "
                f"{d_model}-wide residual gives {d_model * len(cfg.modes)}"
            )
        self.hook_pooled = HookPoint()
        self.dense = nn.ModuleList([SentenceDense(c) for c in cfg.dense])
        self.hook_normalized = HookPoint() if cfg.normalize else None

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], attention_mask: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch d_sentence"]:
        mask = attention_mask.to(x.dtype)[..., None]
        first = attention_mask.to(torch.int).argmax(dim=1)
        parts: list[Tensor] = []
        mean_sum = x.mul(mask).sum(dim=1)
        n_tokens = mask.sum(dim=1).clamp(min=1e-9)
        for mode in self.cfg.modes:
            if mode == "cls":
                parts.append(x[torch.arange(x.shape[0], device=x.device), first])
            elif mode == "max":
                parts.append(x.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
            elif mode == "mean":
                parts.append(mean_sum / n_tokens)
            elif mode == "mean_sqrt_len_tokens":
                parts.append(mean_sum / n_tokens.sqrt())
            elif mode == "weightedmean":
                # weights 1, 2, ... counted from the first attended token (left padding shifts them)
                w = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
                w = (w - first.to(x.dtype)[:, None, None]) * mask
                parts.append(x.mul(w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9))
            elif mode == "lasttoken":
                seen, idx = attention_mask.flip(1).max(dim=1)
                idx = torch.where(seen == 0, x.shape[1] - 1, idx)
                last = x.shape[1] - idx - 1
                parts.append((x * mask)[torch.arange(x.shape[0], device=x.device), last])
            else:  # pragma: no cover - the config validates modes
                raise ValueError(f"unknown pooling mode {mode!r}")
        pooled = self.hook_pooled(torch.cat(parts, dim=-1))
        for layer in self.dense:
            pooled = layer(pooled)
        if self.hook_normalized is None:
            return pooled
        return self.hook_normalized(nn.functional.normalize(pooled, p=2, dim=1))


class LMHead(nn.Module):
    """``logits = (x * scale) @ W_U + b_U``; tied: ``W_U`` is ``W_E.T`` (the same parameter)."""

    def __init__(self, d_model: int, d_vocab: int, cfg: UnembedConfig, embed: Embed) -> None:
        super().__init__()
        self.cfg = cfg
        self._embed = [embed] if cfg.tied else []  # read only when tied (placement follows the reference)
        self.W_U_untied = None if cfg.tied else nn.Parameter(torch.empty(d_model, d_vocab))
        self.b_U = nn.Parameter(torch.zeros(d_vocab)) if cfg.bias else None

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._embed[0].W_E.T if self.W_U_untied is None else self.W_U_untied

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        if self.cfg.scale != 1.0:
            x = x * self.cfg.scale
        return vocab_projection(x, self.W_U, self.b_U)


class Unembed(nn.Module):
    """TransformerLens's ``unembed`` of an :class:`LMHead`: the raw linear map ``x @ W_U + b_U``.

    A view (the head's parameters, nothing registered twice). It leaves out the head's ``scale``
    (T5's tied ``d_model ** -0.5``, which TransformerLens applies to the stream before ``unembed``),
    so ``unembed(x)`` equals HF's ``lm_head(x)``, and ``lm_head(x) == unembed(x * scale)``.
    """

    def __init__(self, head: LMHead) -> None:
        super().__init__()
        self._head = [head]

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._head[0].W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        """The head's bias, or zeros where it has none (T5)."""
        head = self._head[0]
        return head.b_U if head.b_U is not None else head.W_U.new_zeros(head.W_U.shape[1])

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        return vocab_projection(x, self.W_U, self._head[0].b_U)
