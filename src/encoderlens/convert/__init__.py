"""HF -> encoderlens converters. Each module registers itself; importing this package loads them all."""

from encoderlens.convert import bart, bert, t5  # noqa: F401
from encoderlens.convert.registry import find_converter, register, supported_architectures

__all__ = ["find_converter", "register", "supported_architectures"]
