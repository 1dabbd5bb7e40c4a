"""Loading reads HF tensors lazily: each is read when a converter takes it and freed once converted.

Three measures, each of which failed before the lazy reader (the whole state dict was read first and
kept until the model was built, and a ``dtype=bfloat16`` load passed through a float32 model):

- Python references (weakrefs) to the HF tensors ``WeightReader.take`` hands out: at any moment at most
  a couple of the ones a converter transforms are alive; the others live on as the model's own
  parameters (plain references: HF layout and ours agree);
- the dtype of what is read and converted under ``dtype=torch.bfloat16``: no float32 weight survives its
  read;
- the peak resident memory (``VmHWM``) of a subprocess loading a ~200 MB checkpoint.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertForMaskedLM, BertModel, HubertConfig, HubertForCTC, ModernBertForMaskedLM

import encoderlens
from encoderlens.convert.registry import WeightReader
from encoderlens.io import weight_files
from encoderlens.models.base import HookedModel
from tests.parity.test_audio_parity import tiny_kwargs as hubert_kwargs
from tests.parity.test_modernbert_parity import tiny_config as modernbert_config
from tests.parity.test_whisper_parity import make_whisper
from tests.seq2seq_helpers import make_hf
from tests.unit.analysis_helpers import tiny_config

MAKERS = {
    "bert": lambda: BertForMaskedLM(tiny_config(num_hidden_layers=4)),
    "t5": lambda: make_hf("t5"),
    "t5_untied": lambda: make_hf("t5_gated"),
    "bart": lambda: make_hf("bart"),
    "hubert": lambda: HubertForCTC(HubertConfig(**hubert_kwargs())),
    "modernbert": lambda: ModernBertForMaskedLM(modernbert_config()),
    "whisper": lambda: make_whisper(),
}


class TakeTracker:
    """Wraps ``WeightReader.take`` / ``take_optional`` (weakrefs to what they return, and at each take which
    earlier ones are still alive) and ``HookedModel.load_converted`` (which taken tensors are alive when the
    converted state dict is loaded, and which of them are its own values: the model's, passed through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken: list[tuple[str, weakref.ref[torch.Tensor]]] = []
        self.alive_at_take: list[set[str]] = []
        self.kept: set[str] = set()  # alive at load_converted, as a value of the converted state dict
        self.stray: set[str] = set()  # alive at load_converted, held by something else
        for method in ("take", "take_optional"):
            monkeypatch.setattr(WeightReader, method, self._wrap(getattr(WeightReader, method)))
        original_load = HookedModel.load_converted

        def load_converted(model: HookedModel, state_dict: dict[str, torch.Tensor], *args: Any, **kw: Any) -> None:
            gc.collect()
            ids = {id(t) for t in state_dict.values()} | {id(t._base) for t in state_dict.values()}  # views too
            alive = [(name, id(ref())) for name, ref in self.taken if ref() is not None]
            self.kept |= {name for name, i in alive if i in ids}
            self.stray |= {name for name, i in alive if i not in ids}
            original_load(model, state_dict, *args, **kw)

        monkeypatch.setattr(HookedModel, "load_converted", load_converted)

    def _wrap(self, original: Any) -> Any:
        def take(reader: WeightReader, key: str) -> torch.Tensor | None:
            self.alive_at_take.append({name for name, ref in self.taken if ref() is not None})
            t = original(reader, key)
            if t is not None:
                self.taken.append((key, weakref.ref(t)))
            return t

        return take


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_each_hf_tensor_is_read_when_taken_and_freed_once_converted(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    folder = tmp_path / kind
    MAKERS[kind]().save_pretrained(folder)
    tracker = TakeTracker(monkeypatch)
    encoderlens.from_pretrained(folder)
    # a tensor the converter passes through unchanged (or reshapes: a view) is a converted value, later the
    # model's parameter
    assert not tracker.stray, f"HF tensors referenced by something else than the model: {sorted(tracker.stray)}"
    converted = {name for name, _ in tracker.taken} - tracker.kept
    assert len(converted) >= 8, "the check needs weights the converter transforms"
    # transposed / split / compared tensors die right after their conversion: never more than 2 alive
    most = max(len(alive - tracker.kept) for alive in tracker.alive_at_take)
    assert most <= 2, f"up to {most} HF tensors alive at once besides the model's own"


def test_bf16_load_of_an_fp32_checkpoint_never_holds_fp32_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "bert"
    BertForMaskedLM(tiny_config(num_hidden_layers=4)).save_pretrained(folder)
    read_fp32: list[weakref.ref[torch.Tensor]] = []
    alive_fp32_at_read: list[int] = []
    original_read = weight_files._read_safetensors

    def read(*args: Any) -> torch.Tensor:
        alive_fp32_at_read.append(sum(r() is not None for r in read_fp32))
        t = original_read(*args)
        if t.dtype == torch.float32:
            read_fp32.append(weakref.ref(t))
        return t

    tracker = TakeTracker(monkeypatch)
    converted_dtypes: set[torch.dtype] = set()
    original_load = HookedModel.load_converted

    def load_converted(self: HookedModel, state_dict: dict[str, torch.Tensor], *args: Any, **kw: Any) -> None:
        converted_dtypes.update(t.dtype for t in state_dict.values())
        original_load(self, state_dict, *args, **kw)

    monkeypatch.setattr(weight_files, "_read_safetensors", read)
    monkeypatch.setattr(HookedModel, "load_converted", load_converted)
    for device_map in (None, "cpu"):
        read_fp32.clear()
        alive_fp32_at_read.clear()
        converted_dtypes.clear()
        model = encoderlens.from_pretrained(folder, dtype=torch.bfloat16, device_map=device_map)
        assert len(read_fp32) > 20 and max(alive_fp32_at_read) == 0  # each float32 read dies at its cast
        assert converted_dtypes == {torch.bfloat16}  # the converted state dict: already bfloat16
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not tracker.stray


def test_lazy_weights_read_nothing_up_front_and_each_tensor_on_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    hf = BertModel(tiny_config())
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    reads: list[int] = []
    original_read = weight_files._read_safetensors
    monkeypatch.setattr(weight_files, "_read_safetensors", lambda *a: reads.append(1) or original_read(*a))
    from encoderlens.io.checkpoint import open_weights

    expected = hf.state_dict()
    for folder in ("single", "sharded"):
        weights = open_weights(tmp_path / folder)
        assert not reads and set(weights) == set(expected)
        for name in weights:
            assert torch.equal(weights[name], expected[name])
        assert len(reads) == len(weights)
        w = weights.with_dtype(torch.float16)["encoder.layer.0.output.dense.weight"]
        assert w.dtype == torch.float16 and torch.equal(w, expected["encoder.layer.0.output.dense.weight"].half())
        reads.clear()


def test_a_header_that_lies_about_sizes_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    BertModel(tiny_config()).save_pretrained(folder)
    f = folder / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [d + 1 for d in header[name]["shape"]]
    text = json.dumps(header).encode()
    f.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])
    with pytest.raises(ValueError, match=rf"could not read the weight file .*model\.safetensors.*{name}"):
        encoderlens.from_pretrained(folder)


# The peak is the child's VmHWM (its own memory's high-water mark), reset after the warm-up; ru_maxrss
# would not do: across exec it keeps the high-water mark of the process that spawned the child (pytest's)
_MEASURE = """
import sys, torch, encoderlens
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
encoderlens.from_pretrained(sys.argv[1])  # warm up: imports, allocator
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
base = status("VmRSS")
model = encoderlens.from_pretrained(sys.argv[2], dtype=getattr(torch, sys.argv[3]))
print(status("VmHWM") - base)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads peak memory from /proc (Linux)")
def test_peak_memory_of_loading_is_the_converted_model_not_twice_the_checkpoint(tmp_path: Path) -> None:
    """~200 MB of float32 weights that the converter transposes: loading used to peak at the checkpoint
    plus the converted copy (about 2x; 2.5x for bfloat16, through a float32 model)."""
    small, big = tmp_path / "small", tmp_path / "big"
    wide = dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=4)
    BertModel(tiny_config(**{**wide, "num_hidden_layers": 1, "intermediate_size": 8})).save_pretrained(small)
    config = tiny_config(**wide)
    config.architectures = ["BertModel"]
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in BertModel(config).state_dict().items()}
    big.mkdir()
    config.save_pretrained(big)
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, big / "model.safetensors")  # no init
    size = (big / "model.safetensors").stat().st_size
    assert 180e6 < size < 250e6
    src = str(Path(encoderlens.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    runs = {  # in parallel: each measures its own memory
        dtype: subprocess.Popen(
            [sys.executable, "-c", _MEASURE, str(small), str(big), dtype],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for dtype in ("float32", "bfloat16")
    }
    growth = {}
    for dtype, run in runs.items():
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        growth[dtype] = int(out.split()[-1]) / size
    # float32: the model itself (1x) and a few tensors; bfloat16: half of it
    assert growth["float32"] < 1.4 and growth["bfloat16"] < 0.75, growth


@pytest.mark.parametrize("zip_format", [True, False])
def test_bin_checkpoints_are_read_and_copied_out_of_the_file(tmp_path: Path, zip_format: bool) -> None:
    """``pytorch_model.bin``: memory-mapped (zip format) or read whole (legacy format); the model's
    parameters never share memory with what ``torch.load`` returned."""
    from encoderlens.io.checkpoint import open_weights

    torch.manual_seed(0)
    hf = BertModel(tiny_config())
    hf.config.save_pretrained(tmp_path)
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    torch.save(sd, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    weights = open_weights(tmp_path)
    assert set(weights) == set(sd)
    for name, t in sd.items():
        assert torch.equal(weights[name], t)
    if zip_format:  # each read is a copy out of the map
        name = "embeddings.word_embeddings.weight"
        assert weights[name].data_ptr() != weights[name].data_ptr()
    model = encoderlens.from_pretrained(tmp_path)
    assert torch.equal(model.embed.W_E, sd["embeddings.word_embeddings.weight"])


def test_a_model_built_from_an_hf_model_shares_no_memory_with_it() -> None:
    """``from_pretrained(hf_model=hf)`` used to hand the HF model's own tensors to the layouts that agree
    (embeddings, norms): zeroing the HF model's weights zeroed ours, and ablating ours edited the HF reference."""
    hf = BertForMaskedLM(tiny_config()).eval()
    model = encoderlens.from_pretrained(hf_model=hf)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
    assert [n for n, p in model.named_parameters() if not torch.equal(p, before[n])] == []
    hf_storages = {t.untyped_storage().data_ptr() for t in hf.state_dict().values()}
    assert not hf_storages & {p.untyped_storage().data_ptr() for p in model.parameters()}


def _rewrite_header(f: Path, edit: Any, tail: bytes = b"") -> None:
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    f.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :] + tail)


def test_overlapping_offsets_or_trailing_bytes_are_refused(tmp_path: Path) -> None:
    """Two header entries over the same bytes (sizes consistent) used to load: each tensor silently read the
    other's values. The safetensors library refuses such files, and files with bytes after the last tensor."""
    folder = tmp_path / "bert"
    BertModel(tiny_config()).save_pretrained(folder)
    f = folder / "model.safetensors"
    original = f.read_bytes()

    def alias(header: dict[str, Any]) -> None:
        same = [k for k in header if k != "__metadata__" and k.endswith("LayerNorm.weight")]
        header[same[1]]["data_offsets"] = header[same[0]]["data_offsets"]

    _rewrite_header(f, alias)
    with pytest.raises(ValueError, match=r"could not read the weight file .*model\.safetensors.*overlapping"):
        encoderlens.from_pretrained(folder)
    f.write_bytes(original)
    _rewrite_header(f, lambda header: None, tail=b"\0" * 8)
    with pytest.raises(ValueError, match=r"could not read the weight file .*model\.safetensors.*the tensors end"):
        encoderlens.from_pretrained(folder)
    f.write_bytes(original[:-1])  # truncated by one byte
    with pytest.raises(ValueError, match=r"could not read the weight file .*model\.safetensors.*truncated"):
        encoderlens.from_pretrained(folder)
