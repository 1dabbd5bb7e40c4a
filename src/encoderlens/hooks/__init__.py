"""Hook machinery: :class:`HookPoint` and :class:`HookedRootModule`.

A :class:`HookPoint` is an identity module placed on every interesting activation. Its name is its
path in the module tree (``blocks.3.attn.hook_pattern``). Forward hooks receive ``(tensor, hook=...)``
and may return a replacement tensor, which then flows downstream. Backward hooks receive the gradient
of the activation.

As in TransformerLens 3.5, forward hooks are torch forward hooks recorded as :class:`LensHandle`
(permanent flag, context level), :meth:`HookedRootModule.hooks` nests context levels, and
``names_filter`` takes a name, a glob (``"blocks.*.attn.hook_pattern"``), a list of those or a callable.
Components ask ``hook.has_hooks()`` to choose a fused fast path when nothing needs the intermediate
values.
"""

from __future__ import annotations

from encoderlens.hooks.conversion import BaseTensorConversion, HookConversion
from encoderlens.hooks.point import HookPoint, LensHandle, ReadOnlyHook
from encoderlens.hooks.root import HookedRootModule, KeepPropertyErrors, copy_to, wait_for_copies
from encoderlens.names import OPT_IN_HOOKS, NameFilter, get_act_name

__all__ = [
    "OPT_IN_HOOKS",
    "BaseTensorConversion",
    "HookConversion",
    "HookPoint",
    "HookedRootModule",
    "KeepPropertyErrors",
    "LensHandle",
    "NameFilter",
    "ReadOnlyHook",
    "copy_to",
    "get_act_name",
    "wait_for_copies",
]
