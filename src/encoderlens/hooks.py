"""Hook machinery: :class:`HookPoint` and :class:`HookedRootModule`.

A :class:`HookPoint` is an identity module placed on every interesting activation. Its name is its
path in the module tree (``blocks.3.attn.hook_pattern``). Forward hooks receive ``(tensor, hook=...)``
and may return a replacement tensor, which then flows downstream. Backward hooks receive the gradient
of the activation.

Differs from TransformerLens: hooks are stored on the HookPoint itself rather than registered as
torch forward hooks, so a HookPoint with no hooks costs one Python call and a component can ask
``hook.has_hooks()`` to choose a fused fast path when nothing needs the intermediate values.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from encoderlens.names import get_act_name

__all__ = ["OPT_IN_HOOKS", "HookPoint", "HookedRootModule", "KeepPropertyErrors", "get_act_name"]

HookFn = Callable[..., Tensor | None]
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]
Direction = Literal["fwd", "bwd"]


@dataclass(eq=False)
class _Hook:
    fn: HookFn
    permanent: bool


class HookPoint(nn.Module):
    """Identity module that calls hook functions on the activation passing through it.

    Example:
        >>> hp = HookPoint()
        >>> hp.add_hook(lambda x, hook: x * 2)
        >>> hp(torch.ones(2)).tolist()
        [2.0, 2.0]
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self.fwd_hooks: list[_Hook] = []
        self.bwd_hooks: list[_Hook] = []
        self.ctx: dict[str, Any] = {}

    def add_hook(self, fn: HookFn, dir: Direction = "fwd", is_permanent: bool = False) -> None:
        """Attach ``fn``. Forward: ``fn(tensor, hook=self) -> Tensor | None``. Backward: ``fn(grad, hook=self)``."""
        if not callable(fn):
            raise TypeError(f"hook function must be callable, got {type(fn).__name__}")
        if dir == "fwd":
            self.fwd_hooks.append(_Hook(fn, is_permanent))
        elif dir == "bwd":
            self.bwd_hooks.append(_Hook(fn, is_permanent))
        else:
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")

    def remove_hooks(self, dir: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = False) -> None:
        """Remove hooks in one or both directions (permanent hooks only if asked)."""
        keep = (lambda h: h.permanent) if not including_permanent else (lambda h: False)
        if dir in ("fwd", "both"):
            self.fwd_hooks = [h for h in self.fwd_hooks if keep(h)]
        if dir in ("bwd", "both"):
            self.bwd_hooks = [h for h in self.bwd_hooks if keep(h)]

    def clear_context(self) -> None:
        self.ctx = {}

    def has_hooks(self) -> bool:
        """Whether any forward or backward hook is attached (used to pick fused fast paths)."""
        return bool(self.fwd_hooks or self.bwd_hooks)

    def forward(self, x: Tensor) -> Tensor:
        for h in self.fwd_hooks:
            out = h.fn(x, hook=self)
            if out is not None:
                if not isinstance(out, Tensor):
                    raise TypeError(
                        f"forward hook on {self.name!r} returned {type(out).__name__}; "
                        "a hook must return a Tensor (the replacement activation) or None"
                    )
                if out.shape != x.shape:
                    raise ValueError(
                        f"forward hook on {self.name!r} returned shape {tuple(out.shape)}, expected "
                        f"{tuple(x.shape)}; return a tensor of the activation's shape"
                    )
                x = out
        if self.bwd_hooks and x.requires_grad:
            for h in self.bwd_hooks:
                x.register_hook(_BackwardCall(h.fn, self))
        return x


class _BackwardCall:
    """Calls a backward hook with the gradient; the gradient itself is left unchanged unless returned."""

    def __init__(self, fn: HookFn, hook: HookPoint) -> None:
        self.fn = fn
        self.hook = hook

    def __call__(self, grad: Tensor) -> Tensor | None:
        return self.fn(grad, hook=self.hook)


#: Hook points that ``names_filter=None`` ("cache everything") leaves out, because hooking them makes
#: the model compute something extra: ``hook_result`` (every head's output) is ``n_heads`` times the
#: size of the residual stream. Name them (a name, a list or a callable filter) to cache them.
OPT_IN_HOOKS: tuple[str, ...] = ("hook_result",)


def _name_matcher(names_filter: NameFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: not name.endswith(OPT_IN_HOOKS)
    if isinstance(names_filter, str):
        target = names_filter
        return lambda name: name == target
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, Sequence):
        targets = set(names_filter)
        return lambda name: name in targets
    raise TypeError(
        f"names_filter must be None, a hook name, a list of names or a callable, got {type(names_filter).__name__}"
    )


class KeepPropertyErrors:
    """Mixin for ``nn.Module`` subclasses: a property's own ``AttributeError`` reaches the caller.

    When a property raises ``AttributeError`` (``model.W_U`` on a checkpoint without an MLM head),
    Python falls back to ``nn.Module.__getattr__``, which replaces the explanation with
    "'HookedEncoder' object has no attribute 'W_U'". This ``__getattr__`` re-runs the property so
    its message is the one raised. Every model inherits it through :class:`HookedRootModule`; put it
    before ``nn.Module`` in the bases of other modules with explanatory properties.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            prop = getattr(type(self), name, None)
            if isinstance(prop, property) and prop.fget is not None:
                prop.fget(self)  # raises the property's explanatory AttributeError
            raise


class HookedRootModule(KeepPropertyErrors, nn.Module):
    """Base class of every model: finds its HookPoints and runs with hooks or caching.

    Subclasses build their modules, then call :meth:`setup`. Properties that raise ``AttributeError``
    keep their message (:class:`KeepPropertyErrors`).
    """

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]

    def setup(self) -> None:
        """Name every HookPoint after its path and index modules by name."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            module.name = name  # type: ignore[assignment]
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module

    # ------------------------------------------------------------------ names
    def hook_names(self) -> list[str]:
        """All hook point names in module order."""
        return list(self.hook_dict)

    def _resolve(self, name_or_filter: str | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name_or_filter):
            return [hp for name, hp in self.hook_dict.items() if name_or_filter(name)]
        if not isinstance(name_or_filter, str):
            raise TypeError(
                f"hook target must be a hook name (str) or a filter callable, got {type(name_or_filter).__name__}"
            )
        if name_or_filter in self.hook_dict:
            return [self.hook_dict[name_or_filter]]
        if any(ch in name_or_filter for ch in "*?["):
            hits = [hp for name, hp in self.hook_dict.items() if fnmatch.fnmatchcase(name, name_or_filter)]
            if hits:
                return hits
        raise ValueError(self._unknown_hook_message(name_or_filter))

    def _unknown_hook_message(self, name: str) -> str:
        names = list(self.hook_dict)
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        if not close:
            # match on the last component ('hook_patern' -> all '*.hook_pattern')
            tail = name.rsplit(".", 1)[-1]
            tails = sorted({n.rsplit(".", 1)[-1] for n in names})
            close_tails = difflib.get_close_matches(tail, tails, n=3, cutoff=0.5)
            close = [n for n in names if n.rsplit(".", 1)[-1] in close_tails][:5]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown hook name {name!r}{hint} "
            f"(this model has {len(names)} hook points; list them with model.hook_names())"
        )

    def check_hook_name(self, name: str) -> None:
        """Raise a ValueError naming the closest hook points if ``name`` is not a hook point."""
        self._resolve(name)

    # ------------------------------------------------------------------ add / remove
    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
    ) -> None:
        """Attach ``hook`` to the named hook point, every point matching a glob, or every point a filter accepts."""
        for hp in self._resolve(name):
            hp.add_hook(hook, dir=dir, is_permanent=is_permanent)

    def reset_hooks(self, including_permanent: bool = False) -> None:
        """Remove all (non-permanent, unless asked) hooks and clear hook contexts."""
        for hp in self.hook_dict.values():
            hp.remove_hooks("both", including_permanent=including_permanent)
            hp.clear_context()

    def active_hook_names(self) -> list[str]:
        return [name for name, hp in self.hook_dict.items() if hp.has_hooks()]

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
    ) -> Iterator[HookedRootModule]:
        """Context manager that attaches hooks and removes them on exit, even if the body raises.

        Example:
            >>> with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)]):
            ...     logits = model("hello")
        """
        added: list[tuple[HookPoint, _Hook, Direction]] = []
        try:
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for target, fn in pairs:
                    for hp in self._resolve(target):
                        hp.add_hook(fn, dir=direction)  # type: ignore[arg-type]
                        lst = hp.fwd_hooks if direction == "fwd" else hp.bwd_hooks
                        added.append((hp, lst[-1], direction))  # type: ignore[arg-type]
            yield self
        finally:
            if reset_hooks_end:
                for hp, h, direction in added:
                    lst = hp.fwd_hooks if direction == "fwd" else hp.bwd_hooks
                    if h in lst:
                        lst.remove(h)

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
        **model_kwargs: Any,
    ) -> Any:
        """Run the model with temporary hooks.

        Hooks are removed afterwards, also when the forward raises. With ``bwd_hooks`` and
        ``reset_hooks_end=True`` the backward pass must happen inside; pass ``reset_hooks_end=False``
        to call ``.backward()`` yourself, then :meth:`reset_hooks`.

        Example:
            >>> def zero_head(z, hook):
            ...     z[:, :, 0] = 0.0
            ...     return z
            >>> model.run_with_hooks("hello", fwd_hooks=[("blocks.0.attn.hook_z", zero_head)])
        """
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end=reset_hooks_end):
            return self(*model_args, **model_kwargs)

    def get_caching_hooks(
        self,
        names_filter: NameFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], list[tuple[str, HookFn]], list[tuple[str, HookFn]]]:
        """Build hooks that store activations (and gradients, as ``name + '_grad'``) into ``cache``."""
        if isinstance(names_filter, str) and names_filter not in self.hook_dict:
            self.check_hook_name(names_filter)
        if isinstance(names_filter, (list, tuple)):
            for n in names_filter:
                self.check_hook_name(n)
        match = _name_matcher(names_filter)
        store: dict[str, Tensor] = {} if cache is None else cache

        def saver(suffix: str) -> HookFn:
            def save(t: Tensor, hook: HookPoint) -> None:
                v = t.detach()
                if device is not None:
                    v = v.to(device)
                if remove_batch_dim:
                    v = v[0]
                assert hook.name is not None
                store[hook.name + suffix] = v

            return save

        fwd = [(name, saver("")) for name in self.hook_dict if match(name)]
        bwd = [(name, saver("_grad")) for name in self.hook_dict if match(name)] if incl_bwd else []
        return store, fwd, bwd  # type: ignore[return-value]

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the model and cache activations.

        Args:
            names_filter: None (every hook point but the :data:`OPT_IN_HOOKS`, i.e. ``hook_result``),
                a hook name, a list of names, or a callable on names.
            device: Move cached tensors there as they are produced (e.g. ``"cpu"`` to offload).
            remove_batch_dim: Drop the batch dimension (batch size must be 1).
            incl_bwd: Also cache gradients (``name_grad``); the output must be a scalar-reducible tensor
                and the backward pass is run on ``output.sum()`` unless it is a scalar already.
            return_cache_object: Return the cache object built by :meth:`make_cache` (models return an
                :class:`~encoderlens.cache.ActivationCache`), else the plain dict.

        Returns:
            ``(output, cache)``.

        Example:
            >>> logits, cache = model.run_with_cache("The cat sat.")
            >>> cache["pattern", 0].shape  # (batch, head, query_pos, key_pos)
        """
        store, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim)
        with self.hooks(fwd, bwd, reset_hooks_end=reset_hooks_end):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                target = out if isinstance(out, Tensor) else getattr(out, "logits", None)
                if not isinstance(target, Tensor):
                    raise TypeError(
                        "incl_bwd=True needs the model to return a tensor; "
                        f"got {type(out).__name__}. Pass a return_type that gives a tensor"
                    )
                (target if target.ndim == 0 else target.sum()).backward()
        if return_cache_object:
            return out, self.make_cache(store, has_batch_dim=not remove_batch_dim)
        return out, store

    def make_cache(self, store: dict[str, Tensor], has_batch_dim: bool = True) -> Any:
        """Wrap cached activations for :meth:`run_with_cache`; here the dict itself.

        Models (:class:`~encoderlens.models.base.HookedModel`) return an
        :class:`~encoderlens.cache.ActivationCache`, which lives in a layer above this one.
        """
        return store
