"""Model families. Importing this package registers each family with the loader."""

from encoderlens.models.audio_encoder import AudioEncoderOutput, HookedAudioEncoder, Transcription
from encoderlens.models.encoder import EncoderOutput, HookedEncoder, MaskPrediction
from encoderlens.models.encoder_decoder import EncoderDecoderOutput, HookedEncoderDecoder
from encoderlens.models.whisper import HookedWhisper

__all__ = [
    "AudioEncoderOutput",
    "EncoderDecoderOutput",
    "EncoderOutput",
    "HookedAudioEncoder",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "HookedWhisper",
    "MaskPrediction",
    "Transcription",
]
