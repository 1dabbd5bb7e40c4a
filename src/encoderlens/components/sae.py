"""Sparse autoencoders (SAEs) as hooked modules, with SAELens's architectures and hook names.

An SAE reads an activation ``x`` (``d_in`` features, any leading axes) and writes a reconstruction
through ``d_sae`` sparse features::

    x_in   = norm_in(x) - b_dec * apply_b_dec_to_input
    pre    = x_in @ W_enc + b_enc                                  (standard, top-k, jump-ReLU)
    acts   = relu(pre)                                             standard
           = relu(pre) * (pre > threshold)                         jump-ReLU
           = relu of the k largest entries of pre, 0 elsewhere     top-k
           = 1[x_in @ W_enc + b_gate > 0] * relu(x_in @ (W_enc * exp(r_mag)) + b_mag)     gated
    recons = norm_out(acts @ W_dec + b_dec)

Top-k SAEs with ``rescale_acts_by_decoder_norm`` (SAELens's option) select and report features on
``pre * |W_dec[i]|`` and decode ``acts / |W_dec[i]|`` (a no-op once the decoder rows have unit norm).

``norm_in`` / ``norm_out`` follow ``normalize_activations``: ``"none"``, ``"constant_norm_rescale"``
(scale ``x`` to norm ``sqrt(d_in)``, undo on the output) and ``"layer_norm"`` (standardise ``x``, undo on
the output). ``"expected_average_only_in"`` (a constant input scale estimated in training) is the identity
here: the loaders fold the release's ``norm_scaling_factor`` into the weights and set ``"none"``, or refuse. ``reshape_activations="hook_z"`` flattens ``(..., head, d_head)``
inputs (attention ``hook_z``) and restores the shape on the output.

Hook points (SAELens's names): ``hook_sae_input``, ``hook_sae_acts_pre``, ``hook_sae_acts_post`` (the
features), ``hook_sae_recons``, ``hook_sae_error`` (``x - recons``, only with ``use_error_term``) and
``hook_sae_output``. With ``use_error_term`` the output is ``recons + error``, where the error is
computed from a run *without* the SAE's hooks, in the wider of the input's and the SAE's dtypes: unhooked,
the output equals the input (up to float rounding in that dtype, also for a bfloat16 SAE), and a hook on the features changes the output by exactly the change of the reconstruction.

Reading and writing SAELens folders (``cfg.json`` + ``sae_weights.safetensors``) is in
:mod:`encoderlens.components.sae_format`; splicing an SAE into a model is in :mod:`encoderlens.models.saes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from encoderlens.hooks import HookPoint, KeepPropertyErrors

Architecture = Literal["standard", "gated", "topk", "jumprelu"]
ARCHITECTURES: tuple[str, ...] = ("standard", "gated", "topk", "jumprelu")
NORMALIZATIONS: tuple[str, ...] = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
SAE_HOOKS: tuple[str, ...] = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is: its architecture, sizes, where it reads, and how it treats its input.

    Attributes:
        architecture: ``"standard"``, ``"gated"``, ``"topk"`` or ``"jumprelu"``.
        d_in: Input width (the hooked activation's last axis, or ``head * d_head`` for ``hook_z``).
        d_sae: Number of features.
        hook_name: The hook point the SAE reads and writes (``"blocks.2.hook_resid_post"``).
        k: Active features per position (top-k only).
        rescale_acts_by_decoder_norm: Top-k only: rank and report features scaled by their decoder norms
            (see the module doc).
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding (SAELens's default).
        normalize_activations: See the module doc.
        reshape_activations: ``"none"`` or ``"hook_z"``.
        dtype: Parameter dtype name (``"float32"``).
        metadata: Everything else from ``cfg.json`` (model name, ``prepend_bos``, ``context_size``...).
    """

    architecture: str
    d_in: int
    d_sae: int
    hook_name: str | None = None
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"SAE architecture must be one of {ARCHITECTURES}, got {self.architecture!r} "
                "(SAELens's other kinds, e.g. transcoders, are not supported)"
            )
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"SAE {name} must be a positive int, got {v!r}")
        bad_k = not isinstance(self.k, int) or isinstance(self.k, bool) or not 1 <= self.k <= self.d_sae
        if self.architecture == "topk" and bad_k:
            raise ValueError(f"a top-k SAE needs an int k in [1, d_sae={self.d_sae}], got k={self.k!r}")
        if self.rescale_acts_by_decoder_norm and self.architecture != "topk":
            raise ValueError(
                f"rescale_acts_by_decoder_norm applies to top-k SAEs only, got architecture={self.architecture!r}"
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations must be one of {NORMALIZATIONS}, got {self.normalize_activations!r}"
            )
        if self.reshape_activations not in ("none", "hook_z"):
            raise ValueError(f"reshape_activations must be 'none' or 'hook_z', got {self.reshape_activations!r}")
        if self.dtype.removeprefix("torch.") not in _DTYPES:
            raise ValueError(f"SAE dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype.removeprefix("torch.")]


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class SparseAutoencoder(KeepPropertyErrors, nn.Module):
    """An SAE (see the module doc for the maths) with SAELens's parameter and hook names.

    Parameters: ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``, ``b_dec (d_in)``, and ``b_enc (d_sae)``
    (standard, top-k, jump-ReLU), ``threshold (d_sae)`` (jump-ReLU), ``b_gate``, ``b_mag``, ``r_mag``
    (gated). New SAEs start with zero biases and a random decoder (unit rows) whose transpose is the
    encoder.

    Example:
        >>> sae = SparseAutoencoder(SAEConfig("topk", d_in=384, d_sae=1536, k=32, hook_name="blocks.3.hook_resid_post"))
        >>> feats = sae.encode(torch.randn(2, 7, 384)); recons = sae.decode(feats)
    """

    def __init__(self, cfg: SAEConfig, use_error_term: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.use_error_term = use_error_term
        dt = cfg.torch_dtype
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, dtype=dt)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt))
        if cfg.architecture == "gated":
            self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
            self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
            self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        else:
            self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        for name in SAE_HOOKS:
            setattr(self, name, HookPoint())
        for name in SAE_HOOKS:
            getattr(self, name).name = name
        self._norm_state: dict[str, Tensor] = {}
        #: Log10 firing rate of each feature (SAELens's ``sparsity.safetensors``), when the loader found one.
        self.log_feature_sparsity: Tensor | None = None

    # ------------------------------------------------------------------ hooks
    def hook_points(self) -> dict[str, HookPoint]:
        """The SAE's hook points by their short names (``"hook_sae_acts_post"``...)."""
        return {name: getattr(self, name) for name in SAE_HOOKS}

    # ------------------------------------------------------------------ maths
    def _check_input(self, x: Tensor) -> Tensor:
        if self.cfg.reshape_activations == "hook_z":
            if x.ndim < 2 or x.shape[-2] * x.shape[-1] != self.cfg.d_in:
                raise ValueError(
                    f"this hook_z SAE reads (..., head, d_head) with head * d_head = {self.cfg.d_in}, "
                    f"got shape {tuple(x.shape)}"
                )
            x = x.flatten(-2)
        elif x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"this SAE reads activations with d_in={self.cfg.d_in} features, got shape {tuple(x.shape)} "
                f"(it was made for {self.cfg.hook_name!r})"
            )
        return x.to(self.W_enc.dtype)

    def _norm_in(self, x: Tensor) -> Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = (self.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            self._norm_state = {"coeff": coeff}
            return x * coeff
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            xc = x - mu
            std = xc.std(dim=-1, keepdim=True)
            self._norm_state = {"mu": mu, "std": std}
            return xc / (std + 1e-5)
        return x

    def _norm_out(self, x: Tensor) -> Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            return x / self._norm_state["coeff"]
        if mode == "layer_norm":
            return x * self._norm_state["std"] + self._norm_state["mu"]
        return x

    def _hp(self, name: str, t: Tensor, hooked: bool) -> Tensor:
        return getattr(self, name)(t) if hooked else t

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations ``(..., d_sae)`` of an activation ``(..., d_in)``."""
        return self._encode(x, hooked=True)

    def _encode(self, x: Tensor, hooked: bool) -> Tensor:
        x = self._hp("hook_sae_input", self._check_input(x), hooked)
        x = self._norm_in(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        arch = self.cfg.architecture
        if arch == "gated":
            active = (x @ self.W_enc + self.b_gate > 0).to(x.dtype)
            pre = self._hp("hook_sae_acts_pre", x @ (self.W_enc * self.r_mag.exp()) + self.b_mag, hooked)
            return self._hp("hook_sae_acts_post", active * torch.relu(pre), hooked)
        pre = self._hp("hook_sae_acts_pre", x @ self.W_enc + self.b_enc, hooked)
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        if arch == "standard":
            acts = torch.relu(pre)
        elif arch == "jumprelu":
            acts = torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        else:
            assert self.cfg.k is not None
            top = pre.topk(self.cfg.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        return self._hp("hook_sae_acts_post", acts, hooked)

    def decode(self, acts: Tensor) -> Tensor:
        """Reconstruction ``(..., d_in)`` of feature activations (in the input's normalisation)."""
        return self._decode(acts, hooked=True)

    def _decode(self, acts: Tensor, hooked: bool) -> Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            acts = acts / self.W_dec.norm(dim=-1)
        return self._norm_out(self._hp("hook_sae_recons", acts @ self.W_dec + self.b_dec, hooked))

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction (plus the error term with ``use_error_term``), shaped and typed like ``x``."""
        recons = self.decode(self.encode(x))
        if self.use_error_term:
            # in the wider of the two dtypes: a bfloat16 SAE on a float32 model gives back the float32 input
            wide = torch.promote_types(x.dtype, recons.dtype)
            with torch.no_grad():
                if any(hp.has_hooks() for hp in self.hook_points().values()):
                    clean = self._decode(self._encode(x, hooked=False), hooked=False)
                else:
                    clean = recons.detach()
                flat = x.flatten(-2) if self.cfg.reshape_activations == "hook_z" else x
                error = flat.to(wide) - clean.to(wide)
            recons = recons.to(wide) + self.hook_sae_error(error)
        out = self.hook_sae_output(recons)
        if self.cfg.reshape_activations == "hook_z":
            out = out.unflatten(-1, x.shape[-2:])
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k is not None else ""
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{k}, hook_name={c.hook_name!r}"
