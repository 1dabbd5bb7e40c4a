"""The CLI through the model contract alone: its generic tasks equal the families' own methods."""

from __future__ import annotations

import soundfile as sf

from encoderlens import HookedAudioEncoder, HookedEncoderDecoder
from encoderlens.cli import main
from tests.seq2seq_helpers import generating_hf, t5_tokenizer
from tests.unit.test_analysis_audio import build, waves


def test_predict_generates_what_generate_gives(tmp_path, capsys):
    hf = generating_hf("t5")
    tok = t5_tokenizer()
    folder = tmp_path / "t5"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    model = HookedEncoderDecoder.from_pretrained(folder)
    for text in ("the cat sat on the mat", "das haus ist gross"):
        assert main(["predict", str(folder), text, "--max-new-tokens", "6"]) == 0
        printed = capsys.readouterr().out.splitlines()[-1].removeprefix("  -> ")
        assert printed == model.generate(text, max_new_tokens=6, return_type="str")


def test_predict_transcribes_what_transcribe_gives(tmp_path, capsys):
    model, path = build(tmp_path, pre_ln=False)
    assert isinstance(model, HookedAudioEncoder)
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), waves()[0], 16000)
    assert main(["predict", str(path), str(wav)]) == 0
    assert capsys.readouterr().out.strip() == f"{wav}: {model.transcribe(str(wav))}"


def test_harvest_and_cli_use_the_contract_only():
    """No family names, model probes, model isinstance checks or ``model: Any`` in harvest/ and cli/."""
    import re
    from pathlib import Path

    import encoderlens

    root = Path(encoderlens.__file__).parent
    banned = [
        r'"encoder_decoder"', r'"audio_encoder"', r'family\s*==', r"getattr\(model\s*,", r"hasattr\(model\s*,",
        r"model: Any\b", r"isinstance\(model\s*,\s*Hooked(Encoder|AudioEncoder|EncoderDecoder)\b", r"\.mlm_head\b",
        r"\.ctc_head\b", r"\.lm_head\b",
    ]  # fmt: skip
    for folder in ("harvest", "cli"):
        for path in sorted((root / folder).glob("*.py")):
            text = path.read_text()
            for pattern in banned:
                assert not re.search(pattern, text), f"{folder}/{path.name} contains {pattern}"
