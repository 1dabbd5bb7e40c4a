"""Hook conversions (TransformerLens 3's ``enable_reshape``): hooks at a point see a converted activation.

``hook_point.enable_reshape(conversion)`` makes every hook function at that point receive
``conversion.convert(activation)``; a tensor the function returns goes back through
``conversion.revert(...)`` before it replaces the activation (a function returning ``None`` leaves the
activation as it was). :class:`BaseTensorConversion` has TransformerLens 3's interface, so code written for
it runs with only the import changed.

The conversion is the user's view: the cache stores what the hooks see (as in TransformerLens), so the
cache helpers, which read the hook table's axes, apply to unconverted points only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["BaseTensorConversion", "HookConversion"]


@runtime_checkable
class HookConversion(Protocol):
    """What :meth:`HookPoint.enable_reshape` accepts: ``convert`` for the hooks' input, ``revert`` for their output."""

    def convert(self, input_value: Any, *full_context: Any) -> Any: ...

    def revert(self, input_value: Any, *full_context: Any) -> Any: ...


class BaseTensorConversion:
    """A conversion with optional filters around :meth:`handle_conversion` (TransformerLens 3's base class).

    Args:
        input_filter: Applied to the activation before :meth:`handle_conversion`.
        output_filter: Applied to :meth:`handle_conversion`'s result.
    """

    def __init__(
        self, input_filter: Callable[[Any], Any] | None = None, output_filter: Callable[[Any], Any] | None = None
    ):
        self.input_filter = input_filter
        self.output_filter = output_filter

    def convert(self, input_value: Any, *full_context: Any) -> Any:
        """The activation as the hooks see it: ``output_filter(handle_conversion(input_filter(x)))``."""
        value = self.input_filter(input_value) if self.input_filter is not None else input_value
        out = self.handle_conversion(value, *full_context)
        return self.output_filter(out) if self.output_filter is not None else out

    def handle_conversion(self, input_value: Any, *full_context: Any) -> Any:
        """The conversion itself; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle_conversion(input_value, *full_context)")

    def revert(self, input_value: Any, *full_context: Any) -> Any:
        """A hook's returned value back in the activation's form (identity unless overridden)."""
        return input_value
