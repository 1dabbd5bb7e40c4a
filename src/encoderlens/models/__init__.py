"""Model families. Importing this package registers each family with the loader."""

from encoderlens.models.encoder import EncoderOutput, HookedEncoder, MaskPrediction
from encoderlens.models.encoder_decoder import EncoderDecoderOutput, HookedEncoderDecoder

__all__ = ["EncoderDecoderOutput", "EncoderOutput", "HookedEncoder", "HookedEncoderDecoder", "MaskPrediction"]
