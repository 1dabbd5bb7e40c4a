"""Splicing sparse autoencoders into any hook point of any model (SAELens's ``HookedSAETransformer`` API).

An SAE attached at hook point ``h`` replaces the activation flowing downstream of ``h`` by the SAE's
output. Hooks on ``h`` itself (and caching ``h``) see the model's own activation, before the SAE; the
SAE's hook points join the model's as ``h + "." + "hook_sae_acts_post"`` (SAELens's names), so
``run_with_hooks``, ``run_with_cache``, the patching and attribution tools and ``hooks()`` reach the
features and the reconstruction error like any other activation.

Every family gets this through :class:`~encoderlens.models.base.HookedModel`; nothing here depends on a
family. Also here: the keywords SAELens passes to ``run_with_cache`` (``prepend_bos``, ``padding_side``,
``stop_at_layer``), given their meaning for encoders (:func:`saelens_run_options`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from encoderlens.components.sae import SparseAutoencoder
from encoderlens.hooks import HookPoint

#: Attached SAE -> (its model, the hook name): an SAE's hook points carry one name, so it is spliced in once.
_HOSTS: weakref.WeakKeyDictionary[SparseAutoencoder, tuple[weakref.ref[Any], str]] = weakref.WeakKeyDictionary()


def _attached_where(sae: SparseAutoencoder) -> str | None:
    """Where ``sae`` is attached now (``"blocks.0.hook_resid_post"``, ``"... of another model"``), else None."""
    entry = _HOSTS.get(sae)
    if entry is None:
        return None
    host, name = entry[0](), entry[1]
    if host is None or host.__dict__.get("_attached_saes", {}).get(name, (None,))[0] is not sae:
        return None
    return name


class StopForward(Exception):
    """Raised by the ``stop_at_layer`` hook, carrying the residual stream where the forward stopped."""

    def __init__(self, value: Tensor) -> None:
        super().__init__("stop_at_layer")
        self.value = value


class SAEHostMixin:
    """``add_sae`` / ``reset_saes`` / ``saes()`` / ``run_with_saes``... for :class:`HookedModel`."""

    hook_dict: dict[str, HookPoint]
    _attached_saes: dict[str, tuple[SparseAutoencoder, bool]]

    @property
    def acts_to_saes(self) -> dict[str, SparseAutoencoder]:
        """Hook name -> the SAE attached there."""
        return {name: sae for name, (sae, _) in self.__dict__.get("_attached_saes", {}).items()}

    def add_sae(self, sae: SparseAutoencoder, use_error_term: bool | None = None, hook_name: str | None = None) -> None:
        """Splice ``sae`` in at its ``cfg.hook_name`` (or ``hook_name``) until :meth:`reset_saes`.

        Args:
            sae: A :class:`~encoderlens.components.sae.SparseAutoencoder`.
            use_error_term: Override the SAE's ``use_error_term`` while attached (None: keep it). True: the
                output is the input plus the effect of hooks on the features (exact reconstruction).
            hook_name: Where to attach, if not the SAE's own ``cfg.hook_name``.

        The hook name may be an alias (TransformerLens's name); the SAE's hook points join under the hook's
        own name. The SAE must be on the model's device (on a model placed with ``device_map``, on its
        hook's device, checked on the forward); its width (``d_in``) is checked against the
        activation on the first forward (a ValueError naming both). It computes in its own dtype; the
        output is cast back to the activation's.

        Raises:
            ValueError: Unknown hook point, an SAE already there, an SAE point as the target, or the SAE on
                another device than the model.
        """
        if not isinstance(sae, SparseAutoencoder):
            raise TypeError(f"add_sae needs a SparseAutoencoder (load one with load_sae), got {type(sae).__name__}")
        name = hook_name or sae.cfg.hook_name
        if not name:
            raise ValueError(
                "this SAE's cfg.hook_name is not set; pass hook_name='blocks.0.hook_resid_post' or similar"
            )
        name = self.canonical_hook_name(name)  # type: ignore[attr-defined]
        if name not in self.hook_dict:
            self._resolve(name)  # type: ignore[attr-defined]  # raises with the closest names
            raise ValueError(f"add_sae needs one exact hook name, got the pattern {name!r}")
        own = next(self.parameters(), None)  # type: ignore[attr-defined]
        # on a model placed over several devices the hook's device is its block's: the splice checks the
        # SAE against the activation itself on the forward
        placed = self.hf_device_map is not None  # type: ignore[attr-defined]
        if own is not None and not placed and own.device != sae.W_enc.device:
            raise ValueError(
                f"the SAE for {name!r} is on {sae.W_enc.device}, the model on {own.device}; move it first: "
                f"sae.to({str(own.device)!r})"
            )
        attached = self.__dict__.setdefault("_attached_saes", {})
        if name in attached:
            raise ValueError(f"an SAE is already attached at {name!r}; call reset_saes([{name!r}]) first")
        if any(name.startswith(f"{other}.") for other in attached):
            raise ValueError(f"{name!r} is a hook point of an attached SAE; SAEs cannot be attached to SAEs")
        where = _attached_where(sae)
        if where is not None:
            host = _HOSTS[sae][0]()
            on = "this model" if host is self else "another model"
            raise ValueError(
                f"this SAE is already attached at {where!r} of {on}; its hook points carry one name, so a second "
                f"splice at {name!r} would cache and hook both sites' features under one name. Detach it first "
                f"(reset_saes([{where!r}])), or attach a copy: copy.deepcopy(sae)"
            )
        attached[name] = (sae, sae.use_error_term)
        _HOSTS[sae] = (weakref.ref(self), name)
        if use_error_term is not None:
            sae.use_error_term = use_error_term
        for short, hp in sae.hook_points().items():
            hp.name = f"{name}.{short}"
            self.hook_dict[hp.name] = hp
        self.hook_dict[name].splice = _splice_fn(sae, name)

    def reset_saes(self, act_names: str | Sequence[str] | None = None) -> None:
        """Detach the SAEs at ``act_names`` (all by default), restoring the model's own activations."""
        attached = self.__dict__.get("_attached_saes", {})
        names = list(attached) if act_names is None else [act_names] if isinstance(act_names, str) else list(act_names)
        names = [self.canonical_hook_name(n) for n in names]  # type: ignore[attr-defined]
        for name in names:
            if name not in attached:
                raise ValueError(f"no SAE is attached at {name!r}; attached: {sorted(attached)}")
            sae, use_error_term = attached.pop(name)
            _HOSTS.pop(sae, None)
            sae.use_error_term = use_error_term
            self.hook_dict[name].splice = None
            for short, hp in sae.hook_points().items():
                self.hook_dict.pop(f"{name}.{short}", None)
                hp.remove_hooks("both", including_permanent=True)
                hp.name = short

    @contextmanager
    def saes(
        self,
        saes: SparseAutoencoder | Sequence[SparseAutoencoder] = (),
        reset_saes_end: bool = True,
        use_error_term: bool | None = None,
    ) -> Iterator[Any]:
        """Context manager: attach ``saes`` and detach them on exit, also when the body raises.

        Example:
            >>> with model.saes([sae]):
            ...     logits, cache = model.run_with_cache("The cat sat.")
            >>> cache["blocks.2.hook_resid_post.hook_sae_acts_post"].shape  # (batch, pos, d_sae)
        """
        added: list[str] = []
        try:
            for sae in [saes] if isinstance(saes, SparseAutoencoder) else list(saes):
                self.add_sae(sae, use_error_term=use_error_term)
                added.append(str(sae.cfg.hook_name))
            yield self
        finally:
            if reset_saes_end and added:
                self.reset_saes(added)

    def run_with_saes(
        self,
        *model_args: Any,
        saes: SparseAutoencoder | Sequence[SparseAutoencoder] = (),
        use_error_term: bool | None = None,
        **model_kwargs: Any,
    ) -> Any:
        """Run the model with ``saes`` spliced in (removed afterwards, also on errors)."""
        with self.saes(saes, use_error_term=use_error_term):
            return self(*model_args, **model_kwargs)  # type: ignore[operator]

    def run_with_cache_with_saes(
        self,
        *model_args: Any,
        saes: SparseAutoencoder | Sequence[SparseAutoencoder] = (),
        use_error_term: bool | None = None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """``run_with_cache`` with ``saes`` spliced in; the cache holds their features and errors."""
        with self.saes(saes, use_error_term=use_error_term):
            return self.run_with_cache(*model_args, **kwargs)  # type: ignore[attr-defined,no-any-return]

    def run_with_hooks_with_saes(
        self,
        *model_args: Any,
        saes: SparseAutoencoder | Sequence[SparseAutoencoder] = (),
        use_error_term: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """``run_with_hooks`` with ``saes`` spliced in (hooks may target their hook points)."""
        with self.saes(saes, use_error_term=use_error_term):
            return self.run_with_hooks(*model_args, **kwargs)  # type: ignore[attr-defined]


def _splice_fn(sae: SparseAutoencoder, name: str) -> Callable[[Tensor], Tensor]:
    def splice(x: Tensor) -> Tensor:
        if x.device != sae.W_enc.device:
            raise ValueError(
                f"the SAE at {name!r} is on {sae.W_enc.device}, the activation on {x.device}; sae.to({str(x.device)!r})"
            )
        z = sae.cfg.reshape_activations == "hook_z"
        width = x.shape[-2] * x.shape[-1] if z and x.ndim >= 2 else x.shape[-1]
        if width != sae.cfg.d_in or not x.is_floating_point():
            what = "head * d_head" if z else "width"
            trained = sae.cfg.metadata.get("model_name")
            raise ValueError(
                f"the SAE attached at {name!r} reads d_in={sae.cfg.d_in} features, but this model's activation there "
                f"has shape {tuple(x.shape)} ({what} {width}, {x.dtype}); the SAE was trained for "
                f"{sae.cfg.hook_name!r}{f' of {trained!r}' if trained else ''}. Attach an SAE trained on this "
                "model's hook point (d_in equal to the activation's last axis, or head * d_head for hook_z SAEs)"
            )
        return sae(x)

    return splice


def saelens_run_options(
    model_args: tuple[Any, ...], options: dict[str, Any], stop_hook: Callable[[int], str], n_layers: int
) -> tuple[list[tuple[str, Callable[..., Any]]], bool]:
    """Interpret the keywords SAELens passes to ``run_with_cache`` (removing them from ``options``).

    - ``prepend_bos``: encoders always put their start token ([CLS], ``<s>``) before text, so ``True`` and
      ``None`` change nothing; ``False`` with text is refused (pass token ids without it instead). Token ids
      are used as given, as TransformerLens does.
    - ``padding_side``: encoders pad on the right; ``"left"`` is refused.
    - ``stop_at_layer=n``: run the embeddings and blocks ``0..n-1`` only and return block ``n``'s
      ``hook_resid_pre`` (of the last stream), as TransformerLens does; ``n = n_layers`` or None runs everything.

    Returns:
        ``(extra forward hooks, whether the forward stops early)``.
    """
    bos = options.pop("prepend_bos", None)
    if bos is False and model_args and isinstance(model_args[0], (str, list, tuple)) and _has_text(model_args[0]):
        raise ValueError(
            "prepend_bos=False: an encoder's tokenizer always adds its start token ([CLS] / <s>) to text, and the "
            "model expects it; pass token ids built without it if you need that (prepend_bos only applies to text)"
        )
    side = options.pop("padding_side", None)
    if side not in (None, "right"):
        raise ValueError(f"padding_side={side!r}: encoders pad on the right; pass padding_side='right' or nothing")
    stop = options.pop("stop_at_layer", None)
    if stop is None:
        return [], False
    if not isinstance(stop, int) or isinstance(stop, bool) or not -n_layers <= stop <= n_layers:
        raise ValueError(f"stop_at_layer must be an int in [-{n_layers}, {n_layers}], got {stop!r}")
    stop = stop % n_layers if stop < 0 else stop
    if stop == n_layers:
        return [], False

    def halt(x: Tensor, hook: Any) -> None:
        raise StopForward(x)

    return [(stop_hook(stop), halt)], True


def _has_text(x: Any) -> bool:
    if isinstance(x, str):
        return True
    return isinstance(x, (list, tuple)) and any(_has_text(v) for v in x)
