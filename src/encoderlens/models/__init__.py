"""Model families. Importing this package registers each family with the loader."""

from encoderlens.models.encoder import EncoderOutput, HookedEncoder, MaskPrediction

__all__ = ["EncoderOutput", "HookedEncoder", "MaskPrediction"]
