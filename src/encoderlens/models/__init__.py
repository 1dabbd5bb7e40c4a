"""Model families. Importing this package registers each family with the loader."""

from encoderlens.models.audio_encoder import AudioEncoderOutput, HookedAudioEncoder, Transcription
from encoderlens.models.encoder import EncoderOutput, HookedEncoder, MaskPrediction

__all__ = [
    "AudioEncoderOutput",
    "EncoderOutput",
    "HookedAudioEncoder",
    "HookedEncoder",
    "MaskPrediction",
    "Transcription",
]
