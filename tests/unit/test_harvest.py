"""harvest(): rows and alignment match run_with_cache, shards bounded, resumable, rank split, errors."""

from __future__ import annotations

import json

import pytest
import torch

from encoderlens.harvest import ItemFields, harvest, load_harvest, writer
from tests.conftest import WORDS, randomize_norms, save_tiny, tiny_bert_tokenizer

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_q", "pooler.hook_pooled"]


@pytest.fixture
def model(tmp_path):
    from transformers import BertConfig, BertForPreTraining

    from encoderlens import HookedEncoder

    cfg = BertConfig(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=40,
        attn_implementation="eager",
    )
    hf = BertForPreTraining(cfg).eval()
    randomize_norms(hf)
    return HookedEncoder.from_pretrained(save_tiny(hf, tmp_path, tiny_bert_tokenizer(tmp_path)))


def texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(1, 12, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, 30, (k,), generator=g)))
    return out


def expected_rows(model, items, hook):
    """Each item alone through run_with_cache: its real-token rows (or its vector), concatenated."""
    rows = []
    with torch.inference_mode():
        for text in items:
            _, cache = model.run_with_cache([text], names_filter=[hook], return_type="all")
            rows.append(cache[hook][0] if hook.startswith("pooler") else cache[hook][0])
    return torch.stack(rows) if hook.startswith("pooler") else torch.cat(rows)


def test_rows_alignment_and_values_match_run_with_cache(model, tmp_path):
    data = texts(11)
    man = harvest(
        model, data, HOOKS, tmp_path / "h", batch_size=4, dtype="fp32", items_per_shard=4, return_type="all",
        progress=False,
    )  # fmt: skip
    assert man["complete"] and man["n_items"] == 11 and man["n_items_expected"] == 11
    assert [sh["n_items"] for sh in man["shards"]] == [4, 4, 3]
    h = load_harvest(tmp_path / "h")
    lengths = [len(model.to_str_tokens(t)) for t in data]
    assert man["n_rows"] == {"token": sum(lengths), "item": 11}
    assert man["hooks"]["blocks.1.attn.hook_q"] == {
        "alignment": "token", "shape": [3, 12], "dtype": "float32", "source_dtype": "float32"
    }  # fmt: skip
    rows = h.rows("token")
    assert rows["item"].tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert rows["pos"].tolist() == [p for n in lengths for p in range(n)]
    assert h.rows("item")["item"].tolist() == list(range(11))
    for hook in HOOKS:
        assert (h.load(hook) - expected_rows(model, data, hook)).abs().max() < 1e-5, hook
    assert h.item_ids() == {i: i for i in range(11)}
    assert not list((tmp_path / "h").glob(".*tmp*"))


def test_storage_dtypes_and_padding_flags(model, tmp_path):
    data = texts(5)
    harvest(model, data, ["blocks.0.hook_resid_post"], tmp_path / "a", batch_size=5, dtype="bf16", progress=False)
    ref = load_harvest(tmp_path / "a")
    assert ref.load("blocks.0.hook_resid_post").dtype == torch.bfloat16
    man = harvest(
        model, data, ["blocks.0.hook_resid_post"], tmp_path / "b", batch_size=5, dtype="fp16", include_padding=True,
        progress=False,
    )  # fmt: skip
    h = load_harvest(tmp_path / "b")
    padded_len = model.tokenize(data).tokens.shape[1]
    assert man["n_rows"]["token"] == 5 * padded_len
    rows = h.rows("token")
    assert rows["pad"].tolist() == (~model.tokenize(data).attention_mask.bool()).flatten().tolist()
    acts = h.load("blocks.0.hook_resid_post")
    assert acts.dtype == torch.float16
    real = acts[~rows["pad"]].float()
    assert (real - ref.load("blocks.0.hook_resid_post").float()).abs().max() < 2e-2  # fp16 vs bf16 rounding


def test_default_storage_keeps_the_model_dtype(model, tmp_path):
    data = texts(4)
    hook = ["blocks.0.hook_resid_post"]
    man = harvest(model, data, hook, tmp_path / "fp32", batch_size=2, progress=False)
    assert man["settings"]["dtype"] == "float32"
    full = load_harvest(tmp_path / "fp32").load(hook[0])
    assert full.dtype == torch.float32
    assert (full - expected_rows(model, data, hook[0])).abs().max() < 1e-5  # batched vs one at a time
    model.to(torch.bfloat16)
    man = harvest(model, data, hook, tmp_path / "bf16", batch_size=2, progress=False)
    assert man["settings"]["dtype"] == "bfloat16" and man["hooks"][hook[0]]["source_dtype"] == "bfloat16"
    half = load_harvest(tmp_path / "bf16").load(hook[0])
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.1  # bf16 model vs fp32 model


def test_dict_items_with_ids_and_token_items(model, tmp_path):
    data = [{"id": f"doc-{i}", "text": t, "target": i % 2} for i, t in enumerate(texts(4))]  # a label: ignored
    harvest(model, data, ["blocks.1.hook_resid_post"], tmp_path / "d", batch_size=3, dtype="fp32", progress=False)
    assert load_harvest(tmp_path / "d").item_ids() == {i: f"doc-{i}" for i in range(4)}
    tokens = [model.tokenize(d["text"]).tokens[0].tolist() for d in data]
    harvest(
        model, iter(tokens), ["blocks.1.hook_resid_post"], tmp_path / "t", batch_size=3, dtype="fp32", progress=False
    )
    a = load_harvest(tmp_path / "d").load("blocks.1.hook_resid_post")
    b = load_harvest(tmp_path / "t").load("blocks.1.hook_resid_post")
    assert (a - b).abs().max() < 1e-5
    with pytest.raises(ValueError, match="content"):
        harvest(model, [{"content": "x"}], ["blocks.0.hook_resid_post"], tmp_path / "e", progress=False)
    harvest(model, [{"content": "the cat"}], ["blocks.0.hook_resid_post"], tmp_path / "f", input_key="content", progress=False)  # fmt: skip
    fields = ItemFields(input_key="content")
    harvest(model, [{"content": "the cat"}], ["blocks.0.hook_resid_post"], tmp_path / "g", items=fields, progress=False)
    with pytest.raises(RuntimeError, match="return_type='all'"):  # the pooler does not run for MLM logits
        harvest(model, data, ["pooler.hook_pooled"], tmp_path / "p", progress=False)


def test_streaming_keeps_memory_bounded_and_stops_early(model, tmp_path, monkeypatch):
    pulled = []

    def gen():
        for i, t in enumerate(texts(40)):
            pulled.append(i)
            yield t

    at_first_shard = []
    save = writer.save_shard_atomic

    def save_and_record(*args, **kwargs):
        if not at_first_shard:
            at_first_shard.append(len(pulled))
        save(*args, **kwargs)

    monkeypatch.setattr(writer, "save_shard_atomic", save_and_record)
    later_layer_calls = []
    model.add_hook("blocks.1.hook_resid_pre", lambda x, hook: later_layer_calls.append(1))
    try:
        man = harvest(
            model, gen(), ["blocks.0.hook_resid_post"], tmp_path / "s", batch_size=4, dtype="fp32",
            shard_mb=0.002, progress=False,
        )  # fmt: skip
    finally:
        model.reset_hooks()
    assert at_first_shard == [4]  # the generator is consumed batch by batch, not read ahead
    assert len(man["shards"]) == 10  # 0.002 MiB < one batch: one shard per batch
    assert max(sh["bytes"] for sh in man["shards"]) < 4 * 12 * 36 * 4 + 4096  # one batch of rows + header
    assert later_layer_calls == []  # the forward stopped after the last requested hook


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_finishes_without_duplicates(model, tmp_path, monkeypatch):
    data = texts(13)
    kw = dict(batch_size=2, dtype="fp32", items_per_shard=2, return_type="all", progress=False)
    save = writer.save_shard_atomic
    saved = []

    def crash_at_fourth_shard(*args, **kwargs):
        if len(saved) == 3:
            raise Crash  # dies while writing shard 4: shards 1-3 are committed
        save(*args, **kwargs)
        saved.append(args[0])

    out = tmp_path / "r"
    with monkeypatch.context() as m:
        m.setattr(writer, "save_shard_atomic", crash_at_fourth_shard)
        with pytest.raises(Crash):
            harvest(model, data, HOOKS, out, **kw)
    man = json.loads((out / "manifest.json").read_text())
    assert not man["complete"] and man["n_items"] == 6 and len(man["shards"]) == 3
    # debris a kill can leave: a shard renamed into place but not yet listed, and a temp file
    (out / "rank000-00003.safetensors").write_bytes(b"partial")
    (out / ".rank000-00004.safetensors.tmp-999").write_bytes(b"partial")
    seen = []
    man = harvest(model, (seen.append(i) or t for i, t in enumerate(data)), HOOKS, out, **kw)
    assert man["complete"] and man["n_items"] == 13 and len(man["shards"]) == 7
    assert not (out / ".rank000-00004.safetensors.tmp-999").exists()
    items = [i for sh in man["shards"] for r in sh["items"] for i in range(*r)]
    assert sorted(items) == list(range(13))
    full = tmp_path / "full"
    harvest(model, data, HOOKS, full, **kw)
    for hook in HOOKS:
        assert torch.equal(load_harvest(out).load(hook), load_harvest(full).load(hook)), hook
    # a finished harvest resumed again does nothing
    again = harvest(model, data, HOOKS, out, **kw)
    assert again["shards"] == man["shards"]


def test_ranks_take_disjoint_shares_and_merge_one_manifest(model, tmp_path):
    data = texts(9)
    kw = dict(batch_size=2, dtype="fp32", return_type="all", progress=False)
    first = harvest(model, data, HOOKS, tmp_path / "m", rank=1, world_size=2, **kw)
    assert not first["complete"] and first["n_items"] == 4  # rank 1: items 1, 3, 5, 7
    man = harvest(model, data, HOOKS, tmp_path / "m", rank=0, world_size=2, **kw)
    assert man["complete"] and man["n_items"] == 9
    assert {sh["rank"] for sh in man["shards"]} == {0, 1}
    harvest(model, data, HOOKS, tmp_path / "one", **kw)
    for hook in HOOKS:
        a, b = load_harvest(tmp_path / "m").load(hook), load_harvest(tmp_path / "one").load(hook)
        assert (a - b).abs().max() < 1e-5, hook


def test_bad_settings_are_refused(model, tmp_path):
    data = texts(3)
    harvest(model, data, ["blocks.0.hook_resid_post"], tmp_path / "x", dtype="fp32", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        harvest(model, data, ["blocks.0.hook_resid_post"], tmp_path / "x", dtype="fp16", progress=False)
    with pytest.raises(ValueError, match="resume=True"):
        harvest(model, data, ["blocks.0.hook_resid_post"], tmp_path / "x", dtype="fp32", resume=False, progress=False)
    with pytest.raises(ValueError, match="two position axes"):
        harvest(model, data, ["blocks.0.attn.hook_pattern"], tmp_path / "p", progress=False)
    with pytest.raises(ValueError, match="did you mean"):
        harvest(model, data, ["blocks.0.hook_resid_psot"], tmp_path / "q", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        harvest(model, data, ["blocks.0.hook_resid_post"], tmp_path / "y", dtype="int8", progress=False)
    with pytest.raises(TypeError, match="single string"):
        harvest(model, "the cat", ["blocks.0.hook_resid_post"], tmp_path / "z", progress=False)


def test_transform_makes_patterns_harvestable(model, tmp_path):
    data = texts(4)
    man = harvest(
        model, data, ["blocks.0.attn.hook_pattern"], tmp_path / "p", dtype="fp32", progress=False,
        transforms={"blocks.0.attn.hook_pattern": lambda p, batch: p.amax(-1).transpose(1, 2)},
    )  # fmt: skip
    assert man["hooks"]["blocks.0.attn.hook_pattern"]["shape"] == [3]
    acts = load_harvest(tmp_path / "p").load("blocks.0.attn.hook_pattern")
    assert acts.shape == (man["n_rows"]["token"], 3) and bool((acts <= 1).all())


def test_audio_items_frames_match_per_item_runs(tmp_path):
    import numpy as np
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from encoderlens import HookedAudioEncoder

    cfg = Wav2Vec2Config(
        hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37, conv_dim=(7, 11),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=5, num_conv_pos_embedding_groups=3,
        do_stable_layer_norm=True, feat_extract_norm="layer", attn_implementation="eager",
    )  # fmt: skip
    hf = Wav2Vec2Model(cfg).eval()
    randomize_norms(hf)
    path = save_tiny(hf, tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(path)  # masked: batching is exact
    model = HookedAudioEncoder.from_pretrained(path)
    g = np.random.default_rng(0)
    waves = [(0.3 * g.standard_normal(n)).astype(np.float32) for n in (400, 1000, 250, 731, 600)]
    data = [{"id": f"utt{i}", "audio": {"array": w, "sampling_rate": 16000}} for i, w in enumerate(waves)]
    hooks = ["blocks.1.hook_resid_post", "frontend.conv.1.hook_out"]
    man = harvest(model, data, hooks, tmp_path / "a", batch_size=3, dtype="fp32", progress=False)
    frames = [int(model.num_frames(len(w))) for w in waves]
    assert man["n_rows"] == {"frame": sum(frames)}
    assert man["alignments"]["frame"]["seconds_per_position"] == 10 / 16000
    h = load_harvest(tmp_path / "a")
    assert h.item_ids() == {i: f"utt{i}" for i in range(5)}
    assert h.rows("frame")["pos"].tolist() == [p for n in frames for p in range(n)]
    with torch.inference_mode():
        for hook in hooks:
            alone = [model.run_with_cache(w, names_filter=[hook], return_type="hidden")[1][hook][0] for w in waves]
            assert (h.load(hook) - torch.cat(alone)).abs().max() < 1e-4, hook
    # the waveform's length follows the batch's padding: refused with how to fix, unless transformed
    with pytest.raises(ValueError, match="transforms="):
        harvest(model, data, ["hook_waveform"], tmp_path / "w", batch_size=3, progress=False)
    peak = {"hook_waveform": lambda w, batch: w.abs().amax(-1, keepdim=True)}
    man = harvest(model, data, ["hook_waveform"], tmp_path / "w2", batch_size=3, transforms=peak, progress=False)
    assert man["n_rows"] == {"item": 5}


def test_seq2seq_items_align_source_and_target_sides(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from encoderlens import HookedEncoderDecoder

    cfg = T5Config(
        vocab_size=99, d_model=36, d_kv=12, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=3,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    hf = T5ForConditionalGeneration(cfg).eval()
    randomize_norms(hf)
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    g = torch.Generator().manual_seed(4)
    src_len, tgt_len = [7, 3, 5, 9, 4], [4, 6, 2, 5, 3]
    data = [
        {"id": f"pair{i}", "source": torch.randint(2, 99, (s,), generator=g).tolist(),
         "target": torch.randint(2, 99, (t,), generator=g).tolist()}
        for i, (s, t) in enumerate(zip(src_len, tgt_len))
    ]  # fmt: skip
    hooks = [
        "encoder.blocks.1.hook_resid_post",
        "decoder.blocks.0.hook_resid_post",
        "decoder.blocks.1.cross_attn.hook_k",
        "decoder.blocks.1.cross_attn.hook_q",
    ]
    man = harvest(model, data, hooks, tmp_path / "s2s", batch_size=2, dtype="fp32", progress=False)
    assert man["n_rows"] == {"encoder_token": sum(src_len), "decoder_token": sum(tgt_len)}
    assert man["hooks"]["decoder.blocks.1.cross_attn.hook_k"]["alignment"] == "encoder_token"
    assert man["hooks"]["decoder.blocks.1.cross_attn.hook_q"]["alignment"] == "decoder_token"
    assert man["alignments"]["decoder_token"]["stream"] == "decoder"
    h = load_harvest(tmp_path / "s2s")
    assert h.rows("decoder_token")["pos"].tolist() == [p for n in tgt_len for p in range(n)]
    with torch.inference_mode():
        for hook in hooks:
            alone = []
            for d in data:  # decoder ids are used as given (the contract's decoder_input)
                _, cache = model.run_with_cache(torch.tensor([d["source"]]), torch.tensor([d["target"]]), names_filter=[hook])  # fmt: skip
                alone.append(cache[hook][0])
            assert (h.load(hook) - torch.cat(alone)).abs().max() < 1e-5, hook
    # sources only: the model says it needs a decoder input
    enc_only = [{"source": d["source"]} for d in data]
    with pytest.raises(ValueError, match="decoder_input"):
        harvest(model, enc_only, ["encoder.blocks.0.hook_resid_post"], tmp_path / "enc", progress=False)
    with pytest.raises(ValueError, match="two position axes"):
        harvest(model, data, ["encoder.hook_position_bias"], tmp_path / "pb", progress=False)


def test_encoderlens_harvest_command_equals_the_function(model, tmp_path, capsys):
    from encoderlens.cli import main

    data = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts(5, seed=3))]
    inp = tmp_path / "items.jsonl"
    inp.write_text("\n".join(json.dumps(d) for d in data) + "\n")
    argv = ["harvest", str(tmp_path / "ckpt"), "--input", str(inp), "--hooks", "blocks.*.hook_resid_post"]
    argv += [
        "--out",
        str(tmp_path / "cli"),
        "--batch-size",
        "2",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "harvested 5 items" in capsys.readouterr().err
    harvest(model, data, ["blocks.*.hook_resid_post"], tmp_path / "api", batch_size=2, dtype="fp32", progress=False)
    a, b = load_harvest(tmp_path / "cli"), load_harvest(tmp_path / "api")
    assert a.complete and a.item_ids() == {i: f"doc-{i}" for i in range(5)}
    for hook in b.hooks:
        assert torch.equal(a.load(hook), b.load(hook)), hook


def test_resume_with_the_data_in_another_order_is_refused(model, tmp_path):
    data = texts(8)
    kw = dict(batch_size=2, dtype="fp32", items_per_shard=2, progress=False)
    hook = ["blocks.0.hook_resid_post"]
    harvest(model, data, hook, tmp_path / "o", max_items=4, **kw)
    # items 0-3 are stored; the same indices now name other items: skipping them mixed two datasets
    for other in (data[::-1], ["an extra first item", *data], [data[0], data[2], data[1], *data[3:]]):
        with pytest.raises(ValueError, match="other items at those indices"):
            harvest(model, other, hook, tmp_path / "o", **kw)
    man = harvest(model, data, hook, tmp_path / "o", **kw)  # the same data resumes
    assert man["complete"] and man["n_items"] == 8
    full = harvest(model, data, hook, tmp_path / "full", **kw)
    assert [sh["digest"] for sh in man["shards"]] == [sh["digest"] for sh in full["shards"]]
    assert torch.equal(load_harvest(tmp_path / "o").load(hook[0]), load_harvest(tmp_path / "full").load(hook[0]))


def test_a_pooler_as_wide_as_the_sequence_stays_one_row_per_item(model, tmp_path):
    # token items of 36 tokens, and a 36-wide pooler: (batch, 36) also matches the (batch, pos) mask
    data = [[5 + (i + j) % 50 for j in range(36)] for i in range(3)]
    hooks = ["pooler.hook_pooled"]
    man = harvest(model, data, hooks, tmp_path / "w", return_type="all", dtype="fp32", progress=False)
    assert man["hooks"]["pooler.hook_pooled"]["alignment"] == "item" and man["n_rows"] == {"item": 3}
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.tensor(data), names_filter=hooks, return_type="all")
    assert (load_harvest(tmp_path / "w").load(hooks[0]) - cache[hooks[0]]).abs().max() < 1e-5
    # a transform's (batch, pos) output is one value per position
    norms = {"blocks.0.hook_resid_post": lambda x, batch: x.norm(dim=-1)}
    man = harvest(
        model, texts(3), ["blocks.0.hook_resid_post"], tmp_path / "n", transforms=norms, progress=False
    )  # fmt: skip
    assert man["hooks"]["blocks.0.hook_resid_post"]["alignment"] == "token"
    assert man["hooks"]["blocks.0.hook_resid_post"]["shape"] == []


def test_resume_with_another_batch_size_is_refused(model, tmp_path):
    # rows of a model that runs padding unmasked (group-norm wav2vec2) depend on the batch they ran in
    data = texts(6)
    hook = ["blocks.0.hook_resid_post"]
    harvest(model, data, hook, tmp_path / "b", batch_size=2, items_per_shard=2, max_items=2, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        harvest(model, data, hook, tmp_path / "b", batch_size=3, items_per_shard=2, progress=False)
    # a folder written before the batch size was recorded still resumes
    progress = tmp_path / "b" / "_progress" / "rank000.json"
    st = json.loads(progress.read_text())
    del st["settings"]["batch_size"]
    progress.write_text(json.dumps(st))
    man = harvest(model, data, hook, tmp_path / "b", batch_size=3, items_per_shard=2, progress=False)
    assert man["complete"] and man["n_items"] == 6
