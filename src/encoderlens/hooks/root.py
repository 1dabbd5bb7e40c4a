"""The root of every model: :class:`HookedRootModule` finds its HookPoints and runs with hooks or caching.

Hooks attach by name, glob, list or callable filter; :meth:`HookedRootModule.hooks` nests context
levels; :meth:`HookedRootModule.run_with_cache` stores activations through read-only hooks, moving
them to another device as they are produced (:func:`copy_to`, :func:`wait_for_copies`).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from encoderlens.hooks.cpu_memory import reuse_freed_cpu_memory
from encoderlens.hooks.point import Direction, Directions, HookFn, HookPoint, ReadOnlyHook
from encoderlens.names import NameFilter, _name_matcher

__all__ = ["HookedRootModule", "KeepPropertyErrors", "copy_to", "wait_for_copies"]


def copy_to(t: Tensor, device: torch.device, pending: set[torch.device] | None = None) -> Tensor:
    """``t`` on ``device`` (``t`` itself when it is there already: no copy).

    With ``pending``, a copy from an accelerator to the CPU goes to pinned memory without waiting
    (``non_blocking=True``) and records the source device in ``pending``: the copy is queued behind the
    kernels that produce ``t``, so the forward keeps running, and the accelerator's memory is reused
    only after the copy (same stream). The CPU tensor may be read only after :func:`wait_for_copies`.
    """
    if pending is not None and device.type == "cpu" and t.device.type == "cuda":
        dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        dst.copy_(t, non_blocking=True)
        pending.add(t.device)
        return dst
    return t.to(device)  # t itself when it is on that device already


def wait_for_copies(pending: set[torch.device]) -> None:
    """Wait until the copies :func:`copy_to` queued from these devices are complete, then empty ``pending``."""
    for dev in pending:
        torch.cuda.synchronize(dev)
    pending.clear()


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
    #: Other accepted names of hook points (``alias -> name``), from :meth:`hook_alias`.
    hook_alias_dict: dict[str, str]

    def setup(self) -> None:
        """Name every HookPoint after its path, index modules by name, and record hook-name aliases."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            module.name = name  # type: ignore[assignment]
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module
        self.hook_alias_dict = {}
        self._alias_of: dict[str, str] = {}
        for name in self.hook_dict:
            alias = self.hook_alias(name)
            if alias is not None and alias != name and alias not in self.hook_dict:
                self.hook_alias_dict[alias] = name
                self._alias_of[name] = alias

    # ------------------------------------------------------------------ names
    def hook_alias(self, name: str) -> str | None:
        """Another name this model accepts for hook point ``name`` (e.g. TransformerLens's), or None.

        Aliases resolve wherever a hook name does (``add_hook``, ``run_with_hooks``, ``names_filter``
        names, globs and callables, cache lookups); cached activations are stored under the hook's own name.
        """
        return None

    def canonical_hook_name(self, name: str) -> str:
        """The hook point's own name for ``name`` (an alias resolved; other names unchanged)."""
        return self.__dict__.get("hook_alias_dict", {}).get(name, name)

    def _with_aliases(self, match: Callable[[str], bool]) -> Callable[[str], bool]:
        """A name filter that also accepts a hook point when it accepts the hook's alias."""
        alias_of: dict[str, str] = self.__dict__.get("_alias_of", {})
        if not alias_of:
            return match
        return lambda name: bool(match(name)) or (name in alias_of and bool(match(alias_of[name])))

    def hook_names(self) -> list[str]:
        """All hook point names in module order."""
        return list(self.hook_dict)

    def _resolve(self, name_or_filter: str | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name_or_filter):
            match = self._with_aliases(name_or_filter)
            return [hp for name, hp in self.hook_dict.items() if match(name)]
        if not isinstance(name_or_filter, str):
            raise TypeError(
                f"hook target must be a hook name (str) or a filter callable, got {type(name_or_filter).__name__}"
            )
        canonical = self.canonical_hook_name(name_or_filter)
        if canonical in self.hook_dict:
            return [self.hook_dict[canonical]]
        if any(ch in name_or_filter for ch in "*?["):
            pattern = name_or_filter
            glob = self._with_aliases(lambda name: fnmatch.fnmatchcase(name, pattern))
            hits = [hp for name, hp in self.hook_dict.items() if glob(name)]
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
    #: Nesting depth of :meth:`hooks` contexts; hooks added inside record it and are removed on exit.
    context_level: int = 0

    def hook_points(self) -> Iterable[HookPoint]:
        """Every HookPoint of the model."""
        return self.hook_dict.values()

    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Attach ``hook`` to the named hook point, every point matching a glob, or every point a filter accepts.

        Args:
            name: A hook name, a glob, or a callable on names.
            hook: ``hook(tensor, hook=HookPoint) -> Tensor | None``.
            dir: ``"fwd"`` or ``"bwd"``.
            is_permanent: Keep it through :meth:`reset_hooks`.
            level: Context level to record (see :meth:`remove_all_hook_fns`).
            prepend: Run before the hooks already on that point.
        """
        for hp in self._resolve(name):
            hp.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(self, name: str | Callable[[str], bool], hook: HookFn, dir: Direction = "fwd") -> None:
        """:meth:`add_hook` with ``is_permanent=True``."""
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(
        self, direction: Directions = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove hooks from every hook point (see :meth:`HookPoint.remove_hooks`)."""
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        """Empty every hook point's ``ctx``."""
        for hp in self.hook_dict.values():
            hp.clear_context()

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Directions = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks (not the permanent ones, unless asked) and, by default, clear hook contexts."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)

    def active_hook_names(self) -> list[str]:
        return [name for name, hp in self.hook_dict.items() if hp.has_hooks()]

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedRootModule]:
        """Context manager that attaches hooks and removes them on exit, even if the body raises.

        Contexts nest: each raises :attr:`context_level`, and on exit removes the (non-permanent) hooks
        of its own level.

        Example:
            >>> with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)]):
            ...     logits = model("hello")
        """
        self.context_level += 1
        level = self.context_level
        try:
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for target, fn in pairs:
                    for hp in self._resolve(target):
                        hp.add_hook(fn, dir=direction, level=level)  # type: ignore[arg-type]
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=level)
            self.context_level -= 1

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
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
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            return self(*model_args, **model_kwargs)

    def get_caching_hooks(
        self,
        names_filter: NameFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, Tensor] | None = None,
        *,
        pending: set[torch.device] | None = None,
    ) -> tuple[dict[str, Tensor], list[tuple[str, HookFn]], list[tuple[str, HookFn]]]:
        """Build hooks that store activations (and gradients, as ``name + '_grad'``) into ``cache``.

        Args:
            names_filter: Which hook points (see :meth:`run_with_cache`).
            incl_bwd: Also store gradients.
            device: Move each tensor there as it is produced (None: keep it where it is, no copy).
            remove_batch_dim: Drop the batch dimension (batch size must be 1).
            cache: The dict to store into (default: a new one).
            pending: With it, accelerator -> CPU copies are queued without waiting (into pinned memory,
                so the forward is not stalled once per hook) and the source devices are added to this
                set: call :func:`wait_for_copies` on it before reading the stored tensors. Without it each
                copy completes before the hook returns.

        The first call of the process lets glibc keep freed memory for reuse
        (:func:`encoderlens.hooks.cpu_memory.reuse_freed_cpu_memory`): a dropped cache's memory then serves
        the next run instead of being faulted in again.
        """
        reuse_freed_cpu_memory()
        if isinstance(names_filter, str) and names_filter not in self.hook_dict:
            self.check_hook_name(names_filter)
        if isinstance(names_filter, (list, tuple)):
            for n in names_filter:
                if not isinstance(n, str):
                    raise TypeError(f"names_filter lists hook names or globs (str), got {type(n).__name__}")
                self.check_hook_name(n)
        match = self._with_aliases(_name_matcher(names_filter))
        store: dict[str, Tensor] = {} if cache is None else cache
        target = None if device is None else torch.device(device)

        def saver(suffix: str) -> HookFn:
            def save(t: Tensor, hook: HookPoint) -> None:
                v = t.detach()
                if target is not None:
                    v = copy_to(v, target, pending)
                if remove_batch_dim:
                    if v.ndim == 0 or v.shape[0] != 1:
                        raise ValueError(
                            f"remove_batch_dim=True needs a batch of one, but {hook.name!r} has shape "
                            f"{tuple(v.shape)} (batch first); run one item or pass remove_batch_dim=False"
                        )
                    v = v[0]
                assert hook.name is not None
                store[hook.name + suffix] = v

            return ReadOnlyHook(save)

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
                a hook name or glob (``"blocks.*.attn.hook_pattern"``), a list of those, or a callable on names.
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
        return self._run_caching(
            lambda: self(*model_args, **model_kwargs),
            names_filter=names_filter,
            device=device,
            remove_batch_dim=remove_batch_dim,
            incl_bwd=incl_bwd,
            reset_hooks_end=reset_hooks_end,
            return_cache_object=return_cache_object,
        )

    def _run_caching(
        self,
        run: Callable[[], Any],
        *,
        names_filter: NameFilter,
        device: str | torch.device | None,
        remove_batch_dim: bool,
        incl_bwd: bool,
        reset_hooks_end: bool,
        return_cache_object: bool,
        extra_fwd: Sequence[tuple[str, HookFn]] = (),
    ) -> tuple[Any, Any]:
        """The body of :meth:`run_with_cache`: ``run()`` under the caching hooks (and ``extra_fwd``)."""
        pending: set[torch.device] = set()
        store, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, pending=pending)
        with self.hooks([*fwd, *extra_fwd], bwd, reset_hooks_end=reset_hooks_end):
            try:
                out = run()
                if incl_bwd:
                    target = out if isinstance(out, Tensor) else getattr(out, "logits", None)
                    if not isinstance(target, Tensor):
                        raise TypeError(
                            "incl_bwd=True needs the model to return a tensor; "
                            f"got {type(out).__name__}. Pass a return_type that gives a tensor"
                        )
                    (target if target.ndim == 0 else target.sum()).backward()
            finally:
                wait_for_copies(pending)
        if return_cache_object:
            return out, self.make_cache(store, has_batch_dim=not remove_batch_dim)
        return out, store

    def make_cache(self, store: dict[str, Tensor], has_batch_dim: bool = True) -> Any:
        """Wrap cached activations for :meth:`run_with_cache`; here the dict itself.

        Models (:class:`~encoderlens.models.base.HookedModel`) return an
        :class:`~encoderlens.cache.ActivationCache`, which lives in a layer above this one.
        """
        return store
