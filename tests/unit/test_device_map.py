"""``from_pretrained(..., device_map=...)``: blocks spread over devices, tested on a CPU-only machine.

Two simulations, and what each shows:

- **two CPU devices**: ``torch.device("cpu")`` and ``torch.device("cpu:0")`` are different devices to
  PyTorch (so the placement installs its moves and every block boundary runs them) but the same memory,
  so the numbers must equal the single-device run *exactly*: forward, ``run_with_cache``, hooks that
  edit activations, ``generate``, the analysis tools.
- **meta devices**: odd blocks on ``"meta"``, the rest on the CPU. Any op mixing a meta and a CPU tensor
  raises, so a forward that finishes shows every tensor reached each block on that block's device (the
  cached ``hook_resid_pre`` of each block is on its device) and the output on the head's. PyTorch cannot
  copy *out* of meta (there is no data), so the test makes ``Tensor.to`` return zeros of the right shape
  for a meta -> CPU copy: values after a meta block are meaningless, devices and shapes are what is checked.

Not tested here (no second real device): CUDA kernels, transfer speed; ``benchmarks/gpu.py`` has a
multi-GPU case that runs when more than one CUDA device is present.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    BertForMaskedLM,
    DebertaV2ForMaskedLM,
    HubertConfig,
    HubertForCTC,
)

import encoderlens
from encoderlens import HookedEncoder, HookedEncoderDecoder
from encoderlens.models import base as models_base
from tests.parity.test_audio_parity import tiny_kwargs as hubert_kwargs
from tests.parity.test_deberta_parity import tiny_config as deberta_config
from tests.parity.test_whisper_parity import _generating, _generation_config, speech_like
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch
from tests.unit.analysis_helpers import padded_tokens, tiny_config

CPU, CPU0, META = torch.device("cpu"), torch.device("cpu:0"), torch.device("meta")


def _bert() -> Any:
    return BertForMaskedLM(tiny_config()).eval()


def _deberta() -> Any:
    return DebertaV2ForMaskedLM(deberta_config()).eval()


def _hubert() -> Any:
    torch.manual_seed(0)
    return HubertForCTC(HubertConfig(**hubert_kwargs())).eval()


def _t5() -> Any:
    return make_hf("t5")


def _bart() -> Any:
    return make_hf("bart")


def _whisper() -> Any:
    return _generating()


def _text_input(model: Any) -> dict[str, Any]:
    tokens, mask = padded_tokens()
    return {"args": (tokens,), "kwargs": {"one_zero_attention_mask": mask}}


def _seq2seq_input(model: Any) -> dict[str, Any]:
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    return {"args": (src,), "kwargs": {"one_zero_attention_mask": src_mask, "decoder_input": tgt}}


def _prepared_input(model: Any) -> dict[str, Any]:
    ex = model.example_input()
    batch = model.prepare_input(ex.input, **ex.options)
    return {"args": batch.args, "kwargs": batch.kwargs}


def _audio_input(model: Any) -> dict[str, Any]:
    batch = model.prepare_input([w[:4000] for w in speech_like(lengths=(4000, 3000))])
    return {"args": batch.args, "kwargs": batch.kwargs}


FAMILIES: dict[str, tuple[Callable[[], Any], Callable[[Any], dict[str, Any]]]] = {
    "bert": (_bert, _text_input),
    "deberta": (_deberta, _text_input),
    "hubert": (_hubert, _audio_input),
    "t5": (_t5, _seq2seq_input),
    "bart": (_bart, _seq2seq_input),
    "whisper": (_whisper, _prepared_input),
}


def _load(hf: Any, **kw: Any) -> Any:
    extra = {"generation_config": _generation_config()} if type(hf).__name__.startswith("Whisper") else {}
    return encoderlens.from_pretrained(hf_model=hf, **extra, **kw)


def _split(model: Any, other: torch.device, last: bool = False) -> dict[str, torch.device]:
    """Odd blocks (and with ``last``, each stream's last block) on ``other``, everything else on the CPU."""
    assert model.hf_device_map is not None
    lasts = {f"{s.prefix}blocks.{s.n_layers - 1}" for s in map(model.stream_spec, model.streams)} if last else set()
    return {
        name: other if ".blocks." in f".{name}" and (int(name.rsplit(".", 1)[1]) % 2 or name in lasts) else CPU
        for name in model.hf_device_map
    }


def _run(model: Any, inputs: dict[str, Any]) -> Any:
    return model(*inputs["args"], **inputs["kwargs"])


@contextlib.contextmanager
def meta_copies_as_zeros() -> Iterator[None]:
    """``Tensor.to`` from meta to a real device gives zeros of the right shape (PyTorch refuses the copy)."""
    original = torch.Tensor.to

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
        if self.is_meta and device is not None and device.type != "meta":
            return torch.zeros(self.shape, dtype=dtype or self.dtype, device=device)
        return original(self, *args, **kwargs)

    torch.Tensor.to = to  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.to = original  # type: ignore[method-assign]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, Any, Any, dict[str, Any]]:
    make, make_input = FAMILIES[request.param]
    torch.manual_seed(0)
    hf = make()
    single = _load(hf, device_map="cpu")
    return request.param, hf, single, make_input(single)


def test_two_cpu_devices_give_the_single_device_numbers_exactly(family: tuple[str, Any, Any, dict[str, Any]]) -> None:
    name, hf, single, inputs = family
    placed = _load(hf, device_map=_split(single, CPU0))
    assert set(placed.hf_device_map.values()) == {"cpu", "cpu:0"}
    blocks = [m for m in placed.modules() if type(m).__name__ == "TransformerBlock"]
    assert {b.entry_device for b in blocks} == {CPU, CPU0}
    with torch.no_grad():
        assert torch.equal(_run(placed, inputs), _run(single, inputs))
        out_p, cache_p = placed.run_with_cache(*inputs["args"], **inputs["kwargs"])
        out_s, cache_s = single.run_with_cache(*inputs["args"], **inputs["kwargs"])
    assert torch.equal(out_p, out_s)
    assert sorted(cache_p.keys()) == sorted(cache_s.keys())
    for key in cache_s:
        assert torch.equal(cache_p[key], cache_s[key]), key

    # a hook that edits an activation inside a block on the second device still takes effect
    spec = placed.stream_spec(placed.streams[-1])
    hook = (spec.resid_hook(1, "mid"), lambda x, hook: x * 0.5)
    with torch.no_grad():
        edited = placed.run_with_hooks(*inputs["args"], fwd_hooks=[hook], **inputs["kwargs"])
        expected = single.run_with_hooks(*inputs["args"], fwd_hooks=[hook], **inputs["kwargs"])
    assert torch.equal(edited, expected)
    assert not torch.equal(edited, out_s)


def test_meta_blocks_receive_every_input_on_their_device(family: tuple[str, Any, Any, dict[str, Any]]) -> None:
    name, hf, single, inputs = family
    device_map = _split(single, META, last=True)  # the final norm / head after a meta block moves it back
    placed = _load(hf, device_map=device_map)
    assert {p.device for p in placed.parameters()} == {CPU, META}
    for name, p in placed.named_parameters():  # each parameter on its unit's (the longest prefix's) device
        unit = max((u for u in device_map if name.startswith(u + ".")), key=len)
        assert p.device == device_map[unit], name
    with torch.no_grad(), meta_copies_as_zeros():
        out, cache = placed.run_with_cache(*inputs["args"], **inputs["kwargs"])
    assert out.device == CPU and out.shape == _run(single, inputs).shape
    checked = 0
    for stream in placed.streams:
        spec = placed.stream_spec(stream)
        for i in range(spec.n_layers):
            unit = f"{spec.prefix}blocks.{i}"
            assert cache[f"{unit}.hook_resid_pre"].device == device_map[unit], unit
            assert cache[spec.resid_hook(i, "post")].device == device_map[unit], unit
            checked += 1
    assert checked == sum(1 for u in device_map if ".blocks." in f".{u}")
    # the cache's stacking methods gather activations from several devices onto one
    spec = placed.stream_spec(placed.streams[-1])
    view = cache.stream_view(placed.streams[-1]) if len(placed.streams) > 1 else cache
    pre_ln = spec.norm_position == "pre"
    with torch.no_grad(), meta_copies_as_zeros():
        acc = view.accumulated_resid(apply_ln=pre_ln)
        heads = view.stack_head_results()
        pattern = view.stack_activation("pattern")
        parts = view.decompose_resid(apply_ln=True) if pre_ln else None
    assert acc.shape[0] == spec.n_layers + 1 and pattern.shape[0] == spec.n_layers
    assert heads.shape[0] == spec.n_layers * spec.n_heads
    assert acc.device == device_map[f"{spec.prefix}blocks.{spec.n_layers - 1}"]  # the last activation's
    if parts is not None:
        assert parts.shape[0] == (3 if spec.has_cross_attention else 2) * spec.n_layers + len(spec.embed_hooks)


def test_generate_across_devices_equals_one_device() -> None:
    hf = make_hf("t5")
    single = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    placed = HookedEncoderDecoder.from_pretrained(hf_model=hf, device_map=_split(_load(hf, device_map="cpu"), CPU0))
    src, src_mask, _, _ = padded_seq2seq_batch()
    kw: dict[str, Any] = {"max_new_tokens": 6, "one_zero_attention_mask": src_mask, "return_type": "tokens"}
    assert torch.equal(placed.generate(src, **kw), single.generate(src, **kw))


def test_generation_with_the_head_on_another_device() -> None:
    """Logits come back from the head's device to the tokens' (greedy, beams, Whisper's decoding rules)."""
    t5 = _load(make_hf("t5_gated"), device_map={"": "cpu", "lm_head": "meta"})  # untied head: free to move
    assert t5.hf_device_map["lm_head"] == "meta" and t5.hf_device_map["embed"] == "cpu"
    src, src_mask, _, _ = padded_seq2seq_batch()
    kw: dict[str, Any] = {"max_new_tokens": 3, "one_zero_attention_mask": src_mask, "return_type": "tokens"}
    whisper = _load(_whisper(), device_map={"": "cpu", "lm_head": "meta"})
    with torch.no_grad(), meta_copies_as_zeros():
        greedy = t5.generate(src, stop_at_eos=False, **kw)
        beams = t5.generate(src, num_beams=2, **kw)
        heard = whisper.generate(speech_like(lengths=(9_000,)), max_new_tokens=3, language="en")  # no detection: meta
    assert greedy.device == beams.device == heard.device == CPU
    assert greedy.shape == (3, 4) and beams.shape[0] == 3


def test_analysis_tools_across_devices() -> None:
    from encoderlens.analysis import logit_lens, patch_residual

    hf = _bert()
    single = HookedEncoder.from_pretrained(hf_model=hf)
    placed = HookedEncoder.from_pretrained(hf_model=hf, device_map=_split(_load(hf, device_map="cpu"), CPU0))
    tokens, _ = padded_tokens()
    with torch.no_grad():
        lens_p, lens_s = logit_lens(placed, tokens[:1]), logit_lens(single, tokens[:1])
    assert torch.equal(lens_p.logits, lens_s.logits)
    corrupt = tokens[:1].clone()
    corrupt[0, 2] = 7

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 2, 5] - logits[:, 2, 6]

    res = [patch_residual(m, tokens[:1], corrupt, metric, positions=[1, 2], normalize=False) for m in (placed, single)]
    assert torch.equal(res[0].values, res[1].values)


def test_to_one_device_undoes_the_placement() -> None:
    hf = _bert()
    placed = HookedEncoder.from_pretrained(hf_model=hf, device_map=_split(_load(hf, device_map="cpu"), CPU0))
    tokens, mask = padded_tokens()
    before = placed(tokens, one_zero_attention_mask=mask)
    placed.to("cpu")
    assert placed.hf_device_map is None
    assert all(m.entry_device is None and not m._forward_pre_hooks for m in placed.blocks)
    assert not placed.embed._forward_pre_hooks and not placed.mlm_head._forward_pre_hooks
    assert torch.equal(placed(tokens, one_zero_attention_mask=mask), before)
    placed.to(torch.float64)  # a dtype-only move keeps nothing to undo and raises nothing
    assert placed.W_E.dtype == torch.float64


# ---------------------------------------------------------------------------------------------- strategies


def test_units_groups_and_hf_device_map() -> None:
    t5 = _load(make_hf("t5"), device_map="cpu")
    assert list(t5.hf_device_map) == [
        "embed", "encoder.position_bias", "encoder.blocks.0", "encoder.blocks.1", "encoder.blocks.2",
        "encoder.ln_final", "decoder.position_bias", "decoder.blocks.0", "decoder.blocks.1", "decoder.ln_final",
        "lm_head",
    ]  # fmt: skip
    assert set(t5.hf_device_map.values()) == {"cpu"}
    # one device: nothing installed, the block loop reads one attribute per block and moves nothing
    assert all(not m._forward_pre_hooks for m in t5.modules())
    assert all(b.entry_device is None for stack in (t5.encoder, t5.decoder) for b in stack.blocks)
    # the tied head reads embed.W_E: it cannot go elsewhere
    with pytest.raises(ValueError, match="must share a device.*embed: cpu.*lm_head: meta"):
        _load(make_hf("t5"), device_map={"": "cpu", "lm_head": "meta"})
    # what the model's forward glues before the blocks (front end, frame mask, embedding norm): one device
    with pytest.raises(ValueError, match="must share a device.*embed_ln: meta, frontend: cpu"):
        _load(_hubert(), device_map={"": "cpu", "embed_ln": "meta"})


def test_sequential_and_balanced_fill_devices_by_parameter_bytes() -> None:
    hf = _bert()  # 3 blocks
    one = _load(hf, device_map="cpu")
    units, _ = one._placement_units()
    size = {u.name: u.n_bytes(torch.float32) for u in units}
    total = sum(size.values())
    head = size["embed"] + size["mlm_head"]  # tied: one group
    seq = _load(hf, device_map="sequential", max_memory={"cpu": head + size["blocks.0"], "meta": "1GiB"})
    assert seq.hf_device_map == {
        "embed": "cpu", "blocks.0": "cpu", "blocks.1": "meta", "blocks.2": "meta", "mlm_head": "cpu",
        "unembed": "cpu",
    }  # fmt: skip
    bal = _load(hf, device_map="balanced", max_memory={"cpu": "1GiB", "meta": "1GiB"})
    on_cpu = sum(size[n] for n, d in bal.hf_device_map.items() if d == "cpu")
    assert 0 < on_cpu <= (total + 1) // 2 + max(size.values())
    assert set(bal.hf_device_map.values()) == {"cpu", "meta"}
    # "auto" with a trailing CPU: the CPU is offload, only for what the first device cannot hold
    auto = _load(hf, device_map="auto", max_memory={"meta": f"{total}B", "cpu": "1GiB"})
    assert set(auto.hf_device_map.values()) == {"meta"}
    with pytest.raises(ValueError, match="does not fit max_memory.*raise max_memory or add 'cpu'"):
        _load(hf, device_map="sequential", max_memory={"cpu": 1000})
    # sizes follow the load dtype
    half = _load(
        hf,
        device_map="sequential",
        dtype=torch.bfloat16,
        max_memory={"cpu": (head + size["blocks.0"]) // 2, "meta": 10**9},
    )
    assert half.hf_device_map == seq.hf_device_map


def test_shared_blocks_stay_together() -> None:
    albert = AlbertForMaskedLM(AlbertConfig(vocab_size=99, embedding_size=16, hidden_size=36, num_hidden_layers=3,
                                            num_attention_heads=3, intermediate_size=37)).eval()  # fmt: skip
    model = _load(albert, device_map="cpu")
    with pytest.raises(ValueError, match="must share a device.*blocks.0: cpu.*blocks.1: meta"):
        _load(albert, device_map={"": "cpu", "blocks.1": "meta"})
    assert len({d for n, d in model.hf_device_map.items() if n.startswith("blocks.")}) == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"device_map": {"": "cpu", "encoder.blocks.9": "cpu"}}, "names no module of this model"),
        ({"device_map": {"": "cpu", "blocks.1.attn": "cpu"}}, "inside the placement unit 'blocks.1'.*use 'blocks.1'"),
        ({"device_map": {"embed": "cpu", "mlm_head": "cpu", "blocks": "cpu"}}, r"places no device for \['unembed'\]"),
        ({"device_map": {"": "gpu"}}, "'gpu' is not a device"),
        ({"device_map": {"": torch.cuda.device_count() + 3}}, "CUDA device"),
        ({"device_map": {"": True}}, "expected a device"),
        ({"device_map": "cpu", "device": "cpu"}, "pass one"),
        ({"device_map": {"": "cpu"}, "max_memory": {"cpu": "1GiB"}}, "max_memory applies to device_map='auto'"),
        ({"device_map": "auto", "max_memory": {"cpu": "lots"}}, "expected a size in bytes"),
    ],
)
def test_invalid_maps_raise_saying_what_to_do(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HookedEncoder.from_pretrained(hf_model=_bert(), **kw)


# ---------------------------------------------------------------------------------------------- memory


def test_loading_places_tensors_one_at_a_time_and_keeps_no_cpu_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every converted tensor is copied straight to its device in the load dtype and then dropped: while
    tensor k is being placed, only tensors k.. are still alive on the CPU, and none is left afterwards.

    What this measures: Python references to the converted tensors (so the model never exists twice,
    once as a converted dict and once placed). The checkpoint reader (each HF tensor read when taken and
    freed once converted) and the peak memory of loading are checked in ``test_lazy_loading.py``.
    """
    hf = make_hf("t5")
    converted: list[weakref.ref[torch.Tensor]] = []
    original_find = models_base.find_converter

    def find(config: Any) -> Any:
        convert = original_find(config)

        def tracked(cfg: Any, sd: dict[str, torch.Tensor]) -> Any:
            out_cfg, out = convert(cfg, sd)
            # fresh tensors (not the HF model's own, which the HF model keeps alive)
            out = {k: v.clone() for k, v in out.items()}
            converted.extend(weakref.ref(v) for v in out.values())
            return out_cfg, out

        return tracked

    alive_at_each_placement: list[int] = []
    original_place = models_base.place_tensor

    def place(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
        alive_at_each_placement.append(sum(r() is not None for r in converted))
        out = original_place(t, device, dtype)
        assert out.device == device and out.dtype == torch.bfloat16
        return out

    monkeypatch.setattr(models_base, "find_converter", find)
    monkeypatch.setattr(models_base, "place_tensor", place)
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf, device_map={"": "meta"}, dtype=torch.bfloat16)
    gc.collect()
    n = len(converted)
    assert n == len(list(model.parameters())) and n > 10
    assert alive_at_each_placement == list(range(n, 0, -1))
    assert all(r() is None for r in converted)


def test_an_sae_on_a_placed_model_goes_where_its_hook_runs() -> None:
    """On a placed model the SAE belongs on its hook's block's device, not on the first parameter's."""
    from tests.unit.test_sae import random_sae

    hf = _bert()
    placed = _load(hf, device_map=_split(_load(hf, device_map="cpu"), META))  # block 1 on meta
    sae = random_sae("standard", d_in=hf.config.hidden_size, hook="blocks.1.hook_resid_pre").to(META)
    placed.add_sae(sae)  # refused before: "the model on cpu"
    tokens, _ = padded_tokens()
    with torch.no_grad(), meta_copies_as_zeros():
        assert placed(tokens).shape[:2] == tokens.shape
    placed.reset_saes()
    wrong = random_sae("standard", d_in=hf.config.hidden_size, hook="blocks.1.hook_resid_pre")  # on the CPU
    placed.add_sae(wrong)
    with torch.no_grad(), meta_copies_as_zeros(), pytest.raises(ValueError, match="the activation on meta"):
        placed(tokens)
