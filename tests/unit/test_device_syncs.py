"""No host-device synchronisation in a forward without hooks, and SDPA whenever no attention internals are hooked.

On a GPU, reading a tensor's value on the host (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``,
``nonzero``...) waits for every queued kernel. The forward must not do it: these tests record every
such call during ``run_prepared`` (on CPU, where the same Python calls happen) and allow only the
validation of the user's inputs in ``encoderlens/io`` (token ids and masks are checked before they are
moved to the model's device, so on the host they cost nothing) and checks named ``*_on_host``, which
read only host tensors (they skip tensors on an accelerator).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import HubertConfig, HubertForCTC

from encoderlens import HookedAudioEncoder, HookedEncoderDecoder
from tests.conftest import save_tiny
from tests.parity.test_audio_parity import randomize_all, save_checkpoint, tiny_kwargs
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch
from tests.unit.analysis_helpers import padded_tokens, tiny_mlm

#: Tensor methods that copy a value to the host (a device sync on CUDA).
SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu")
PACKAGE = str(Path(__import__("encoderlens").__file__).parent)


@contextmanager
def record_syncs() -> Iterator[list[str]]:
    """Record where each syncing call comes from: the innermost encoderlens frame, as ``path:line``."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def wrap(name: str):
        orig = originals[name]

        def method(self, *args, **kwargs):
            frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(PACKAGE)]
            if frames:
                f = frames[-1]
                calls.append(f"{name} at {f.filename[len(PACKAGE) + 1 :]}:{f.lineno} in {f.name}")
            return orig(self, *args, **kwargs)

        return method

    try:
        for name in SYNCING:
            setattr(torch.Tensor, name, wrap(name))
        yield calls
    finally:
        for name, orig in originals.items():
            setattr(torch.Tensor, name, orig)


def forward_syncs(model, batch) -> list[str]:
    with torch.inference_mode(), record_syncs() as calls:
        model.run_prepared(batch)
    return [c for c in calls if not c.split(" at ")[1].startswith("io/") and not c.endswith("_on_host")]


@contextmanager
def count_sdpa() -> Iterator[list[int]]:
    n = [0]
    orig = F.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        n[0] += 1
        return orig(*args, **kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        yield n
    finally:
        F.scaled_dot_product_attention = orig


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("syncs")
    encoder = tiny_mlm()
    tokens, mask = padded_tokens()
    t5 = HookedEncoderDecoder.from_pretrained(save_tiny(make_hf("t5"), tmp / "t5"))
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    hf = HubertForCTC(HubertConfig(**tiny_kwargs(num_hidden_layers=2, feat_extract_norm="layer"))).eval()
    randomize_all(hf)
    path, _ = save_checkpoint(hf, tmp / "hubert", return_attention_mask=True)
    audio = HookedAudioEncoder.from_pretrained(path)
    g = np.random.default_rng(0)
    waves = [(0.3 * g.standard_normal(n)).astype(np.float32) for n in (617, 403)]
    return {
        "encoder": (encoder, encoder.prepare_input(tokens, one_zero_attention_mask=mask)),
        "encoder_decoder": (
            t5,
            t5.prepare_input(src, one_zero_attention_mask=src_mask, decoder_input=tgt, decoder_attention_mask=tgt_mask),
        ),
        "audio_encoder": (audio, audio.prepare_input(waves, sampling_rate=16000)),
    }


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder", "audio_encoder"])
def test_forward_without_hooks_makes_no_host_syncs_and_uses_sdpa(models, family):
    model, batch = models[family]
    with count_sdpa() as n:
        assert forward_syncs(model, batch) == []
    n_attn = sum(1 for name in model.hook_dict if name.endswith("hook_pattern"))
    assert n[0] == n_attn  # every attention layer (self and cross) went through SDPA


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder", "audio_encoder"])
def test_hooks_on_the_residual_stream_keep_sdpa_and_add_no_syncs(models, family):
    model, batch = models[family]
    model.add_hook(lambda n: n.endswith("hook_resid_post"), lambda x, hook: x * 1.0)
    model.add_hook(lambda n: n.endswith(("hook_q", "hook_z")), lambda x, hook: None)
    try:
        with count_sdpa() as n:
            assert forward_syncs(model, batch) == []
        assert n[0] == sum(1 for name in model.hook_dict if name.endswith("hook_pattern"))
    finally:
        model.reset_hooks()


def test_a_pattern_hook_takes_the_explicit_path_in_that_layer_only(models):
    model, batch = models["encoder"]
    with count_sdpa() as n, model.hooks([("blocks.1.attn.hook_pattern", lambda x, hook: None)]):
        forward_syncs(model, batch)
    assert n[0] == model.cfg.n_layers - 1


def test_the_recorder_sees_a_sync(models):
    # the recorder works: an .item() in a block's forward is reported (at the block loop that called it)
    model, batch = models["encoder"]
    orig = model.blocks[0].forward

    def syncing(x, *args, **kwargs):
        x.abs().max().item()
        return orig(x, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model.blocks[0], "forward", syncing)
        assert len(forward_syncs(model, batch)) == 1
