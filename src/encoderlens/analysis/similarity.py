"""Sentence-embedding models: pooling as the checkpoint declares it, and where a similarity comes from.

A sentence-transformers checkpoint folder lists its modules in ``modules.json``: the transformer, then a
``Pooling`` module (its ``config.json`` says CLS / mean / max / mean-sqrt-len / weighted-mean / last-token
pooling, several modes being concatenated), optional ``Dense`` layers, and an optional ``Normalize``.
:class:`SentenceEncoder` pairs the hooked model with that pipeline: the model's own sentence pooling
(``HookedEncoder.cfg.sentence_pooling``, read by ``from_pretrained`` from such a folder) when it has one,
else :func:`pooling_from_checkpoint`, which also reads ``Dense`` layers. The pooling arithmetic is the
model's :class:`~encoderlens.components.heads.SentencePooler` in both cases; ``max_seq_length`` and
``do_lower_case`` from ``sentence_bert_config.json`` are honoured.

:func:`attribute_similarity` explains ``cos(embed(a), embed(b))``:

- **tokens, occlusion** (exact, default): each real token of each text is removed in turn (masked out of
  attention and pooling, positions unchanged) and the change of the similarity is recorded:
  ``delta = sim(without token) - sim``.
- **tokens, grad x input** (first order): ``sum_d grad_d * token_embedding_d`` at ``hook_embed``; cheap but
  only a local linear estimate, and its sum is not the similarity.
- **token pairs** (exact, mean pooling without Dense layers): at the output, ``mean(a) . mean(b)`` expands
  into ``sum_ij x_i . y_j / (n_a n_b |mean(a)| |mean(b)|)``, so the matrix sums to the cosine. It says which
  *output* representations carry the similarity, not which input tokens caused it.
- **layers and heads, ablation** (exact, default): each attention layer, MLP and head is zero- (or mean-)
  ablated in both texts at once and the change of the similarity is recorded.
- **layers and heads, grad x act** (first order): ``-grad . act`` (zero ablation) or
  ``-grad . (act - mean)`` (mean ablation), one backward pass for everything.
- **by layer**: the similarity of the pooled residual stream after every layer (pooling mode only; Dense and
  Normalize are not applied to intermediate layers).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from encoderlens.analysis.patching import Target, run_patches
from encoderlens.analysis.results import Labelled
from encoderlens.components.heads import SentencePooler, dense_activation
from encoderlens.config import POOLING_MODES, SentencePoolingConfig
from encoderlens.io.sentence_transformers import read_sentence_transformer
from encoderlens.models.contract import Prepared
from encoderlens.models.encoder import HookedEncoder


@dataclass(frozen=True)
class Dense:
    """A sentence-transformers ``Dense`` module: ``act(x @ W.T + b)`` (``activation``: a ``DENSE_ACTIVATIONS`` name)."""

    W: Tensor
    b: Tensor | None
    activation: str

    def __call__(self, x: Tensor) -> Tensor:
        y = x @ self.W.to(x).T
        if self.b is not None:
            y = y + self.b.to(x)
        return dense_activation(self.activation)(y)


@dataclass(frozen=True)
class Pooling:
    """How token vectors become one sentence vector.

    Attributes:
        modes: Pooling modes, concatenated in this order (sentence-transformers order).
        normalize: L2-normalise the result.
        dense: Dense layers applied after pooling.
        source: Where this came from (a folder, or ``"explicit"``).
    """

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    dense: tuple[Dense, ...] = ()
    source: str = field(default="explicit", compare=False)

    def __post_init__(self) -> None:
        if not self.modes:
            raise ValueError(f"at least one pooling mode is needed; choose from {POOLING_MODES}")
        for m in self.modes:
            if m not in POOLING_MODES:
                raise ValueError(f"unknown pooling mode {m!r}; choose from {POOLING_MODES}")

    @classmethod
    def from_config(cls, cfg: SentencePoolingConfig, source: str = "model") -> Pooling:
        """The pooling a model's ``SentencePoolingConfig`` describes."""
        return cls(tuple(cfg.modes), cfg.normalize, (), source)

    def pool(
        self, x: Float[Tensor, "batch pos d_model"], mask: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch d_out"]:
        """Pooling modes only (no Dense / Normalize): ``(batch, pos, d) -> (batch, d * len(modes))``."""
        # the model's own pooler (left padding, weighted means...), without its normalisation
        return SentencePooler(SentencePoolingConfig(tuple(self.modes)))(x, mask.to(x.device))

    def __call__(
        self, x: Float[Tensor, "batch pos d_model"], mask: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch d_out"]:
        """Full sentence embedding as the checkpoint computes it."""
        y = self.pool(x, mask)
        for d in self.dense:
            y = d(y)
        return F.normalize(y, dim=-1) if self.normalize else y

    @property
    def is_linear_mean(self) -> bool:
        """Mean pooling alone (then cosine similarities decompose exactly over token pairs)."""
        return self.modes == ("mean",) and not self.dense


def pooling_from_checkpoint(path: str | Path) -> Pooling:
    """Read the pooling a sentence-transformers checkpoint folder declares (``modules.json``).

    ``"default"`` and hub names resolve like ``from_pretrained``.

    Raises:
        ValueError: The folder has no ``modules.json`` (not a sentence-transformers checkpoint), or a file is
            missing. NotImplementedError: a module type this reader does not handle.
    """
    from encoderlens.io.checkpoint import resolve_path

    folder = resolve_path(path) if not Path(str(path)).is_dir() else Path(path)
    spec = read_sentence_transformer(folder)
    if not spec.is_sentence_transformer:
        raise ValueError(
            f"{folder} has no modules.json, so it does not declare a sentence-embedding pooling; "
            "pass Pooling(modes=('mean',), normalize=True) (or ('cls',)) explicitly"
        )
    if spec.pooling is None:
        raise NotImplementedError(spec.note)
    dense = tuple(Dense(W.T, b, c.activation) for c, (W, b) in zip(spec.pooling.dense, spec.dense_weights, strict=True))
    return Pooling(spec.pooling.modes, spec.pooling.normalize, dense, str(folder))


class SentenceEncoder:
    """A hooked text encoder plus the pooling its checkpoint declares.

    Example:
        >>> enc = SentenceEncoder.from_pretrained("default")
        >>> enc.similarity("A man plays guitar.", "Someone performs music.")
    """

    def __init__(
        self, model: HookedEncoder, pooling: Pooling, max_seq_length: int | None = None, do_lower_case: bool = False
    ) -> None:
        if not isinstance(model, HookedEncoder):  # argument validation: it pools a text encoder's tokens
            raise TypeError(f"SentenceEncoder needs a text encoder (HookedEncoder), got a {type(model).__name__}")
        if not isinstance(pooling, Pooling):
            raise TypeError(f"pooling must be a Pooling, got {type(pooling).__name__}")
        self.model = model
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self.do_lower_case = do_lower_case

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "default", pooling: Pooling | None = None, **kwargs: Any
    ) -> SentenceEncoder:
        """Load the model and the pooling (and ``max_seq_length``) its folder declares."""
        from encoderlens.io.checkpoint import resolve_path

        folder = resolve_path(name_or_path)
        model = HookedEncoder.from_pretrained(str(folder), **kwargs)
        return cls.from_model(model, folder, pooling)

    @classmethod
    def from_model(
        cls, model: HookedEncoder, folder: str | Path | None = None, pooling: Pooling | None = None
    ) -> SentenceEncoder:
        """Wrap an already-loaded model: ``pooling`` if given, else the model's own sentence pooling, else
        what its checkpoint ``folder`` declares (read by the same reader as the model's, Dense layers included)."""
        own = model.cfg.sentence_pooling
        declared = read_sentence_transformer(Path(folder)).pooling if folder is not None else None
        if pooling is None and own is not None:
            if not own.dense:
                pooling = Pooling.from_config(own)
            elif folder is None:
                raise ValueError(
                    "this model's sentence pooling has Dense layers: pass its checkpoint folder (from_pretrained "
                    "does) so that SentenceEncoder reads the same layers"
                )
        if pooling is None:
            if folder is None:
                raise ValueError(
                    "this model declares no sentence pooling; pass its checkpoint folder or "
                    "pooling=Pooling(('mean',), normalize=True)"
                )
            pooling = pooling_from_checkpoint(folder)
        sp = declared if declared is not None else own
        msl = sp.max_seq_length if sp is not None else None
        lower = sp.do_lower_case if sp is not None else False
        return cls(model, pooling, msl, lower)

    def prepare(self, texts: str | Sequence[str]) -> Prepared:
        """Tokenise (truncating to ``max_seq_length`` like sentence-transformers) into a prepared input."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("expected a string or a non-empty list of strings")
        tok = self.model.tokenizer
        if tok is None:
            raise ValueError("this model has no tokenizer; SentenceEncoder needs text input")
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        known = [n for n in (self.max_seq_length, self.model.max_positions) if n is not None]
        limit = min(known) if known else None
        enc = tok(texts, padding=True, truncation=limit is not None, max_length=limit, return_tensors="pt")
        kw: dict[str, Any] = {"one_zero_attention_mask": enc["attention_mask"]}
        if "token_type_ids" in enc and self.model.token_type_embed is not None:
            kw["token_type_ids"] = enc["token_type_ids"]
        return self.model.prepare_input(enc["input_ids"], **kw)

    def embed_resid(self, resid: Tensor, mask: Tensor) -> Tensor:
        """Sentence embeddings from a final residual stream ``(batch, pos, d)``."""
        return self.pooling(resid, mask)

    def embed(self, texts: str | Sequence[str] | Prepared) -> Tensor:
        """Sentence embeddings ``(batch, d)`` as the checkpoint computes them."""
        p = texts if isinstance(texts, Prepared) else self.prepare(texts)
        with torch.no_grad():
            resid = self.model.run_prepared(p, "embeddings")
        return self.pooling(resid, p.mask(None))

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts."""
        e = self.embed([a, b])
        return float(F.cosine_similarity(e[0], e[1], dim=-1))

    def pair_metric(self, prepared: Prepared) -> Callable[[Tensor], Tensor]:
        """Metric for a 2-item prepared pair: cosine similarity of the two sentence embeddings."""
        mask = prepared.mask(None)

        def metric(resid: Tensor) -> Tensor:
            e = self.pooling(resid, mask)
            return F.cosine_similarity(e[0], e[1], dim=-1)

        return metric

    def reference_metric(self, prepared: Prepared, reference: Tensor) -> Callable[[Tensor], Tensor]:
        """Metric: per-item cosine similarity between the run's embeddings and fixed ``reference`` vectors."""
        mask = prepared.mask(None)

        def metric(resid: Tensor) -> Tensor:
            e = self.pooling(resid, mask)
            return F.cosine_similarity(e, reference.to(e), dim=-1)

        return metric


@dataclass
class SimilarityAttribution:
    """Where ``cos(embed(a), embed(b))`` comes from (see the module doc for each method).

    Attributes:
        similarity: The cosine similarity.
        tokens_a, tokens_b: Per-token scores, axes ``("pos",)`` (real tokens only).
        token_pairs: Exact output-side decomposition ``("pos_a", "pos_b")`` (mean pooling only, else None).
        layers: ``("component", "layer")``, components ``"attn"`` and ``"mlp"``.
        heads: ``("layer", "head")``.
        by_layer: Similarity of the pooled residual after the embeddings and every layer, ``("layer",)``.
        methods: Which method produced each field.
    """

    similarity: float
    tokens_a: Labelled
    tokens_b: Labelled
    token_pairs: Labelled | None
    layers: Labelled
    heads: Labelled | None
    by_layer: Labelled
    methods: dict[str, str] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        """Jupyter: the text report, then interactive heatmaps of the per-layer and per-head parts."""
        parts = [f"<pre class='el-text'>{html.escape(self.to_text())}</pre>", self.layers._repr_html_()]
        if self.heads is not None:
            parts.append(self.heads._repr_html_())
        return "".join(parts)

    def to_text(self, k: int = 5) -> str:
        """A short report."""
        lines = [f"cosine similarity: {self.similarity:+.4f}", f"methods: {self.methods}"]
        for name, res in (("text A tokens", self.tokens_a), ("text B tokens", self.tokens_b)):
            top = res.top(k, absolute=True)
            lines.append(f"{name} ({self.methods['tokens']}): " + ", ".join(f"{c['pos']} {v:+.3f}" for c, v in top))
        lines.append("by layer: " + " ".join(f"{v:+.3f}" for v in self.by_layer.values.tolist()))
        top = self.layers.top(k, absolute=True)
        lines.append(
            f"layers ({self.methods['layers']}): "
            + ", ".join(f"{c['layer']}.{c['component']} {v:+.3f}" for c, v in top)
        )
        if self.heads is not None:
            top = self.heads.top(k, absolute=True)
            lines.append(
                f"heads ({self.methods['heads']}): " + ", ".join(f"{c['layer']}{c['head']} {v:+.3f}" for c, v in top)
            )
        return "\n".join(lines)


def similarity_by_layer(encoder: SentenceEncoder, a: str, b: str) -> Labelled:
    """Cosine similarity of the two texts' pooled residual stream after the embeddings and each layer."""
    p = encoder.prepare([a, b])
    model = encoder.model
    n = model.cfg.n_layers
    last = model.stream_spec(None).resid_hook(n - 1)
    names = {f"blocks.{i}.hook_resid_pre" for i in range(n)} | {last}
    with torch.no_grad():
        _, cache = model.run_prepared_with_cache(p, names_filter=names.__contains__, return_type="embeddings")
    stream = [cache[f"blocks.{i}.hook_resid_pre"] for i in range(n)] + [cache[last]]
    mask = p.mask(None)
    pooled = [encoder.pooling.pool(x, mask) for x in stream]
    sims = torch.stack([F.cosine_similarity(p[0], p[1], dim=-1) for p in pooled])
    return Labelled(sims.cpu(), ("layer",), {"layer": ["embed"] + [f"L{i}" for i in range(n)]}, "similarity by layer")


def _real_labels(p: Prepared, item: int) -> tuple[list[int], list[str]]:
    mask = p.mask(None)[item].bool().tolist()
    labels = p.position_labels(None, item)
    idx = [i for i, m in enumerate(mask) if m]
    return idx, [labels[i] for i in idx]


def _token_occlusion(encoder: SentenceEncoder, p: Prepared, sim: float, mode: str) -> tuple[Tensor, Tensor]:
    model = encoder.model
    tokens, mask = p.args[0], p.mask(None)
    tt = p.kwargs.get("token_type_ids")
    with torch.no_grad():
        base = encoder.pooling(model.run_prepared(p, "embeddings"), mask)
    out = []
    for item in (0, 1):
        idx, _ = _real_labels(p, item)
        if len(idx) < 2 and mode == "remove":
            out.append(torch.full((len(idx),), float("nan")))
            continue
        toks = tokens[item : item + 1].repeat(len(idx), 1)
        msk = mask[item : item + 1].repeat(len(idx), 1)
        for j, pos in enumerate(idx):
            if mode == "remove":
                msk[j, pos] = 0
            else:
                mask_id = getattr(model.tokenizer, "mask_token_id", None)
                if mask_id is None:
                    raise ValueError("occlusion='mask_token' needs a tokenizer with a mask token")
                toks[j, pos] = mask_id
        kw: dict[str, Any] = {"one_zero_attention_mask": msk}
        if tt is not None:
            kw["token_type_ids"] = tt[item : item + 1].repeat(len(idx), 1)
        with torch.no_grad():
            resid = model(toks, return_type="embeddings", **kw)
        emb = encoder.pooling(resid, msk)
        other = base[1 - item][None]
        out.append((F.cosine_similarity(emb, other, dim=-1) - sim).cpu())
    return out[0], out[1]


def _token_grad_x_input(encoder: SentenceEncoder, p: Prepared) -> tuple[Tensor, Tensor]:
    model = encoder.model
    store: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: Any) -> Tensor:
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        store["embed"] = x
        return x

    with torch.enable_grad():
        resid = model.run_prepared(p, "embeddings", fwd_hooks=[("hook_embed", keep)])
        sim = encoder.pair_metric(p)(resid)
        (g,) = torch.autograd.grad(sim, store["embed"])
    scores = (g * store["embed"].detach()).sum(-1).cpu()
    out = []
    for item in (0, 1):
        idx, _ = _real_labels(p, item)
        out.append(scores[item, idx])
    return out[0], out[1]


def _token_pairs(encoder: SentenceEncoder, p: Prepared) -> Labelled | None:
    if not encoder.pooling.is_linear_mean:
        return None
    with torch.no_grad():
        resid = encoder.model.run_prepared(p, "embeddings")
    ia, la = _real_labels(p, 0)
    ib, lb = _real_labels(p, 1)
    xa, xb = resid[0, ia], resid[1, ib]
    ma, mb = xa.mean(0), xb.mean(0)
    pair = (xa @ xb.T) / (len(ia) * len(ib) * ma.norm() * mb.norm())
    return Labelled(pair.cpu(), ("pos_a", "pos_b"), {"pos_a": la, "pos_b": lb}, "exact token-pair share of the cosine")


def _ablation_sources(cache: dict[str, Tensor], names: list[str], mask: Tensor, ablation: str) -> dict[str, Tensor]:
    out = {}
    for n in names:
        x = cache[n]
        if ablation == "zero":
            out[n] = torch.zeros_like(x)
        else:
            m = mask.to(x.device, x.dtype).reshape(mask.shape[0], mask.shape[1], *([1] * (x.ndim - 2)))
            mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
            out[n] = mean.expand_as(x).clone()
    return out


def attribute_similarity(
    encoder: SentenceEncoder,
    a: str,
    b: str,
    *,
    method: Literal["ablation", "grad_x_act"] = "ablation",
    ablation: Literal["zero", "mean"] = "zero",
    token_method: Literal["occlusion", "grad_x_input"] = "occlusion",
    occlusion: Literal["remove", "mask_token"] = "remove",
    heads: bool = True,
    chunk_size: int = 8,
    progress: bool = False,
) -> SimilarityAttribution:
    """Attribute the cosine similarity of two texts to tokens, layers and heads.

    Args:
        encoder: A :class:`SentenceEncoder`.
        a, b: The two texts.
        method: ``"ablation"`` (exact change when each layer / head is ablated in both texts) or
            ``"grad_x_act"`` (first-order estimate of the same, one backward pass).
        ablation: ``"zero"`` or ``"mean"`` (each text's own mean over its real positions).
        token_method: ``"occlusion"`` (exact change when each token is removed) or ``"grad_x_input"``.
        occlusion: ``"remove"`` (mask the token out of attention and pooling) or ``"mask_token"``
            (replace it by [MASK]).
        heads: Also attribute to every head (one ablation each).

    Returns:
        A :class:`SimilarityAttribution`; every score is a change of the cosine similarity (or its
        first-order estimate), except ``token_pairs`` (an exact split of the cosine itself).
    """
    for name, val, allowed in (
        ("method", method, ("ablation", "grad_x_act")),
        ("ablation", ablation, ("zero", "mean")),
        ("token_method", token_method, ("occlusion", "grad_x_input")),
        ("occlusion", occlusion, ("remove", "mask_token")),
    ):
        if val not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {val!r}")
    if not isinstance(a, str) or not isinstance(b, str):
        raise TypeError("attribute_similarity compares two texts: pass two strings")
    model = encoder.model
    p = encoder.prepare([a, b])
    metric = encoder.pair_metric(p)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layer_names = [f"blocks.{i}.hook_{c}_out" for c in ("attn", "mlp") for i in range(n_layers)]
    head_names = [f"blocks.{i}.attn.hook_z" for i in range(n_layers)] if heads else []
    wanted = set(layer_names) | set(head_names)
    with torch.no_grad():
        resid, cache = model.run_prepared_with_cache(p, names_filter=wanted.__contains__, return_type="embeddings")
    sim = float(metric(resid))
    cache_d = dict(cache.items())
    mask = p.mask(None)

    if method == "ablation":
        src = _ablation_sources(cache_d, layer_names + head_names, mask, ablation)
        targets = [Target(n) for n in layer_names] + [
            Target(n, (slice(None), h)) for n in head_names for h in range(n_heads)
        ]
        vals = (
            run_patches(
                model,
                p,
                src,
                targets,
                metric,
                return_type="embeddings",
                chunk_size=chunk_size,
                progress=progress,
                desc="ablating",
            )
            - sim
        )
    else:
        acts: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: Any) -> Tensor:
            acts[hook.name] = x
            return x

        with torch.enable_grad():
            out = model.run_prepared(p, "embeddings", fwd_hooks=[(n, keep) for n in layer_names + head_names])
            value = metric(out)
            grads = dict(zip(acts, torch.autograd.grad(value, list(acts.values()), allow_unused=True)))
        src = _ablation_sources(cache_d, layer_names + head_names, mask, ablation)
        est = []
        for n in layer_names:
            est.append(((src[n] - cache_d[n]) * grads[n]).sum())
        for n in head_names:
            d = ((src[n] - cache_d[n]) * grads[n]).sum((0, 1, 3))  # per head
            est.extend(d)
        vals = torch.stack([e.detach().float().cpu() for e in est])
    layer_vals = vals[: 2 * n_layers].reshape(2, n_layers)
    layers = Labelled(
        layer_vals,
        ("component", "layer"),
        {"component": ["attn", "mlp"], "layer": [f"L{i}" for i in range(n_layers)]},
        f"change of similarity when each layer is {ablation}-ablated",
    )
    head_res = None
    if heads:
        head_res = Labelled(
            vals[2 * n_layers :].reshape(n_layers, n_heads),
            ("layer", "head"),
            {"layer": [f"L{i}" for i in range(n_layers)], "head": [f"H{h}" for h in range(n_heads)]},
            f"change of similarity when each head is {ablation}-ablated",
        )

    if token_method == "occlusion":
        ta, tb = _token_occlusion(encoder, p, sim, occlusion)
        tok_desc = f"occlusion ({occlusion}): exact change of similarity"
    else:
        ta, tb = _token_grad_x_input(encoder, p)
        tok_desc = "grad x input at hook_embed (first order)"
    _, la = _real_labels(p, 0)
    _, lb = _real_labels(p, 1)
    comp_desc = (
        f"{ablation} ablation: exact change of similarity"
        if method == "ablation"
        else f"grad x act ({ablation} ablation, first order)"
    )
    return SimilarityAttribution(
        similarity=sim,
        tokens_a=Labelled(ta, ("pos",), {"pos": la}, "text A tokens"),
        tokens_b=Labelled(tb, ("pos",), {"pos": lb}, "text B tokens"),
        token_pairs=_token_pairs(encoder, p),
        layers=layers,
        heads=head_res,
        by_layer=similarity_by_layer(encoder, a, b),
        methods={"tokens": tok_desc, "layers": comp_desc, "heads": comp_desc, "token_pairs": "exact (mean pooling)"},
    )
