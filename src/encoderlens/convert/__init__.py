"""HF -> encoderlens converters. Each module registers itself; importing this package loads them all."""

# one line per architecture file: importing runs its @register lines
import encoderlens.convert.albert
import encoderlens.convert.bart
import encoderlens.convert.bert
import encoderlens.convert.camembert
import encoderlens.convert.data2vec_text
import encoderlens.convert.deberta_v2
import encoderlens.convert.distilbert
import encoderlens.convert.electra
import encoderlens.convert.hubert
import encoderlens.convert.marian
import encoderlens.convert.modernbert
import encoderlens.convert.roberta
import encoderlens.convert.t5
import encoderlens.convert.wav2vec2
import encoderlens.convert.wavlm
import encoderlens.convert.whisper  # noqa: F401
from encoderlens.convert.registry import find_converter, register, supported_architectures

__all__ = ["find_converter", "register", "supported_architectures"]
