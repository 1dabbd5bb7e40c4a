"""HF -> encoderlens converters. Each module registers itself; importing this package loads them all."""

from encoderlens.convert import bert, hubert, wav2vec2  # noqa: F401
from encoderlens.convert.registry import find_converter, register, supported_architectures

__all__ = ["find_converter", "register", "supported_architectures"]
