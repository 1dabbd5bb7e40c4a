"""The :class:`HookPoint`: an identity module that calls hook functions on the activation passing through it.

Forward hooks are torch forward hooks recorded as :class:`LensHandle` (permanent flag, context level),
as in TransformerLens 3.5; backward hooks are tensor hooks registered during the forward.
:class:`ReadOnlyHook` marks a hook that only reads (the cache's), which lets components keep fused
kernels (:meth:`HookPoint.may_edit`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from encoderlens.hooks.conversion import HookConversion

__all__ = ["Direction", "Directions", "HookFn", "HookPoint", "LensHandle", "ReadOnlyHook"]

HookFn = Callable[..., Tensor | None]
Direction = Literal["fwd", "bwd"]
Directions = Literal["fwd", "bwd", "both"]


@dataclass
class LensHandle:
    """One hook attached to a :class:`HookPoint` (TransformerLens's record of it).

    Attributes:
        hook: The removable handle (``.id``, ``.remove()``).
        is_permanent: Permanent hooks survive :meth:`HookedRootModule.reset_hooks`.
        context_level: The :meth:`HookedRootModule.hooks` nesting level it was added at (None outside).
        user_hook: The function as the user passed it.
    """

    hook: RemovableHandle
    is_permanent: bool = False
    context_level: int | None = None
    user_hook: HookFn | None = None


class ReadOnlyHook:
    """A forward hook that only reads the activation: ``fn(tensor, hook=...)`` is called and the activation
    flows on unchanged (whatever ``fn`` returns is ignored).

    ``run_with_cache`` stores activations through these. Components may then produce an activation
    that only read-only hooks see with a fused kernel instead of the step-by-step computation an
    editing hook needs (LayerNorm's ``hook_scale`` / ``hook_normalized``: one fused pass; see
    :meth:`HookPoint.may_edit`). ``fn`` must not modify the tensor in place.

    Example:
        >>> seen = []
        >>> model.add_hook("blocks.0.ln1.hook_scale", ReadOnlyHook(lambda x, hook: seen.append(x)))
    """

    def __init__(self, fn: Callable[..., object]) -> None:
        if not callable(fn):
            raise TypeError(f"ReadOnlyHook wraps a callable, got {type(fn).__name__}")
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, tensor: Tensor, hook: HookPoint) -> None:
        self.fn(tensor, hook=hook)
        return None


class HookPoint(nn.Module):
    """Identity module that calls hook functions on the activation passing through it.

    Forward hooks are torch forward hooks on this module (as in TransformerLens): a hook returning a
    tensor replaces the activation downstream. Backward hooks receive the activation's gradient.

    Example:
        >>> hp = HookPoint()
        >>> hp.add_hook(lambda x, hook: x * 2)
        >>> hp(torch.ones(2)).tolist()
        [2.0, 2.0]
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self._bwd_fns: OrderedDict[int, Callable[[Tensor], Tensor | None]] = OrderedDict()
        self.ctx: dict[str, Any] = {}
        # a module spliced in after the hooks (an SAE): its output flows downstream, the hooks see the input
        self._splice: Callable[[Tensor], Tensor] | None = None
        self._splice_handle: RemovableHandle | None = None
        # TransformerLens 3's enable_reshape: what the hook functions see (None: the activation itself)
        self.hook_conversion: HookConversion | None = None

    @property
    def splice(self) -> Callable[[Tensor], Tensor] | None:
        """A function (an SAE) applied after every forward hook: its output flows downstream.

        It runs as the last forward hook (hooks added later are still run before it), so hooks see and
        may edit the activation the splice receives.
        """
        return self._splice

    @splice.setter
    def splice(self, fn: Callable[[Tensor], Tensor] | None) -> None:
        if self._splice_handle is not None:
            self._splice_handle.remove()
            self._splice_handle = None
        self._splice = fn
        if fn is not None:
            self._splice_handle = self.register_forward_hook(lambda module, inputs, out: fn(out))

    def _keep_splice_last(self) -> None:
        if self._splice_handle is not None:
            hooks = self._forward_hooks
            hooks[self._splice_handle.id] = hooks.pop(self._splice_handle.id)  # re-inserted last

    def __repr__(self) -> str:
        bits = [f"name={self.name!r}"] if self.name is not None else []
        bits += [f"{len(hs)} {d}" for d, hs in (("fwd", self.fwd_hooks), ("bwd", self.bwd_hooks)) if hs]
        return f"HookPoint({', '.join(bits)})"

    def add_perma_hook(self, hook: HookFn, dir: Direction = "fwd") -> None:
        """Attach a permanent hook (kept by :meth:`HookedRootModule.reset_hooks`)."""
        self.add_hook(hook, dir=dir, is_permanent=True)

    def add_hook(
        self,
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Attach ``hook``: forward ``hook(tensor, hook=self) -> Tensor | None``, backward ``hook(grad, hook=self)``.

        Args:
            hook: The hook function.
            dir: ``"fwd"`` or ``"bwd"``.
            is_permanent: Keep it through :meth:`HookedRootModule.reset_hooks`.
            level: Context level recorded on the :class:`LensHandle` (:meth:`remove_hooks` can filter on it).
            prepend: Run it before the hooks already attached.
        """
        if not callable(hook):
            raise TypeError(f"hook function must be callable, got {type(hook).__name__}")
        if dir == "fwd":
            handle = self.register_forward_hook(_ForwardCall(hook, self), prepend=prepend)
            self._keep_splice_last()
            visible = self.fwd_hooks
        elif dir == "bwd":
            call = _BackwardCall(hook, self)
            handle = RemovableHandle(self._bwd_fns)
            self._bwd_fns[handle.id] = call
            if prepend:
                self._bwd_fns.move_to_end(handle.id, last=False)
            visible = self.bwd_hooks
        else:
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        record = LensHandle(handle, is_permanent, level, user_hook=hook)
        if prepend:
            visible.insert(0, record)
        else:
            visible.append(record)

    def remove_hooks(
        self, dir: Directions = "fwd", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove hooks in ``dir`` (``"fwd"``, ``"bwd"`` or ``"both"``), as TransformerLens.

        Args:
            dir: Which direction(s).
            including_permanent: Also remove permanent hooks (then every hook of ``dir`` goes).
            level: Only hooks added at this context level (None: any level).
        """
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")

        def keep(handles: list[LensHandle]) -> list[LensHandle]:
            kept = []
            for h in handles:
                if including_permanent or (not h.is_permanent and (level is None or h.context_level == level)):
                    h.hook.remove()
                else:
                    kept.append(h)
            return kept

        if dir in ("fwd", "both"):
            self.fwd_hooks = keep(self.fwd_hooks)
        if dir in ("bwd", "both"):
            self.bwd_hooks = keep(self.bwd_hooks)

    def clear_context(self) -> None:
        """Empty the hook context dict ``ctx``."""
        self.ctx = {}

    def has_hooks(self, dir: Directions = "both", including_permanent: bool = True, level: int | None = None) -> bool:
        """Whether hooks matching the filters are attached (also picks the components' fused fast paths).

        Args:
            dir: ``"fwd"``, ``"bwd"`` or ``"both"``.
            including_permanent: Count permanent hooks.
            level: Only hooks of this context level (None: any).
        """
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")
        if including_permanent and level is None:
            # a spliced module (an SAE) counts: the activation must be computed for it
            fwd = bool(self.fwd_hooks) or self._splice is not None
            return bool((dir != "bwd" and fwd) or (dir != "fwd" and self.bwd_hooks))
        handles = (self.fwd_hooks if dir != "bwd" else []) + (self.bwd_hooks if dir != "fwd" else [])
        return any(
            (including_permanent or not h.is_permanent) and (level is None or h.context_level == level) for h in handles
        )

    def may_edit(self) -> bool:
        """Whether a hook may change the activation or needs its gradient.

        True for any forward hook that is not a :class:`ReadOnlyHook` (it may return a replacement or
        edit in place), a spliced module, or a backward hook. Components use the fused computation of
        an activation that only read-only hooks see (see :class:`~encoderlens.components.norm.LayerNorm`).
        """
        if self._splice is not None or self.bwd_hooks:
            return True
        return any(not isinstance(h.user_hook, ReadOnlyHook) for h in self.fwd_hooks)

    def enable_reshape(self, hook_conversion: HookConversion | None = None) -> None:
        """Hooks here see ``hook_conversion.convert(x)``; what they return goes back through ``revert``.

        TransformerLens 3's hook conversion (see :mod:`encoderlens.hooks.conversion`); ``None`` removes it.

        Raises:
            TypeError: ``hook_conversion`` has no ``convert`` and ``revert`` methods.
        """
        if hook_conversion is not None and not isinstance(hook_conversion, HookConversion):
            raise TypeError(
                f"enable_reshape expects an object with convert() and revert() methods (e.g. a "
                f"BaseTensorConversion) or None, got {type(hook_conversion).__name__}"
            )
        self.hook_conversion = hook_conversion

    def layer(self) -> int:
        """The layer index of a ``blocks.{i}.…`` hook name."""
        if self.name is None:
            raise ValueError("this HookPoint has no name yet (names are set by HookedRootModule.setup)")
        parts = self.name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part == "blocks" and parts[i + 1].isdigit():
                return int(parts[i + 1])
        raise ValueError(f"hook {self.name!r} is not inside a block (expected 'blocks.{{i}}.…')")

    def forward(self, x: Tensor) -> Tensor:
        if self._bwd_fns and x.requires_grad:
            for fn in self._bwd_fns.values():
                x.register_hook(fn)
        return x


class _ForwardCall:
    """Calls a forward hook on a HookPoint's output and checks what it returns."""

    def __init__(self, fn: HookFn, hook: HookPoint) -> None:
        self.fn = fn
        self.hook = hook
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, module: nn.Module, inputs: Any, x: Tensor) -> Tensor | None:
        conversion = self.hook.hook_conversion
        out = self.fn(x if conversion is None else conversion.convert(x), hook=self.hook)
        if out is None:
            return None
        if conversion is not None:
            out = conversion.revert(out)
        name = self.hook.name
        if not isinstance(out, Tensor):
            raise TypeError(
                f"forward hook on {name!r} returned {type(out).__name__}; "
                "a hook must return a Tensor (the replacement activation) or None"
            )
        if out.shape != x.shape:
            raise ValueError(
                f"forward hook on {name!r} returned shape {tuple(out.shape)}, expected "
                f"{tuple(x.shape)}; return a tensor of the activation's shape"
            )
        if out.dtype != x.dtype or out.device != x.device:
            raise TypeError(
                f"forward hook on {name!r} returned a {out.dtype} tensor on {out.device}, expected "
                f"{x.dtype} on {x.device}; return e.g. `out.to(x.dtype)` (the activation's dtype and device)"
            )
        return out


class _BackwardCall:
    """Calls a backward hook with the gradient; the gradient itself is left unchanged unless returned."""

    def __init__(self, fn: HookFn, hook: HookPoint) -> None:
        self.fn = fn
        self.hook = hook

    def __call__(self, grad: Tensor) -> Tensor | None:
        conversion = self.hook.hook_conversion
        if conversion is None:
            return self.fn(grad, hook=self.hook)
        out = self.fn(conversion.convert(grad), hook=self.hook)
        return None if out is None else conversion.revert(out)
