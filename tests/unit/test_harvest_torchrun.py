"""harvest under torchrun: 2 CPU processes (gloo), killed mid-run, resumed; equals a single-process harvest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from encoderlens import HookedEncoder
from encoderlens.harvest import harvest, load_harvest
from tests.conftest import randomize_norms, save_tiny, tiny_bert_tokenizer
from tests.unit.test_harvest import texts

SRC = str(Path(__file__).resolve().parents[2] / "src")
HOOKS = ["blocks.*.hook_resid_post", "blocks.0.mlp.hook_post"]
KILLED_WORKER = str(Path(__file__).with_name("harvest_killed_worker.py"))


def torchrun(ckpt: Path, inp: Path, out: Path, kill_after_shards: int | None = None) -> subprocess.CompletedProcess:
    # the killed run uses a worker script that SIGKILLs itself when it starts its next shard
    worker = ["-m", "encoderlens.harvest"] if kill_after_shards is None else [KILLED_WORKER]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        *worker, str(ckpt), "--input", str(inp), "--hooks", *HOOKS, "--out", str(out),
        "--batch-size", "2", "--dtype", "float32", "--items-per-shard", "2", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    if kill_after_shards is not None:
        env["KILL_AFTER_SHARDS"] = str(kill_after_shards)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)


def test_two_process_harvest_killed_and_resumed_equals_single_process(tmp_path):
    from transformers import BertConfig, BertForPreTraining

    cfg = BertConfig(
        vocab_size=99, hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
        max_position_embeddings=40, attn_implementation="eager",
    )  # fmt: skip
    hf = BertForPreTraining(cfg).eval()
    randomize_norms(hf)
    ckpt = save_tiny(hf, tmp_path, tiny_bert_tokenizer(tmp_path))
    data = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts(17, seed=5))]
    inp = tmp_path / "items.jsonl"
    inp.write_text("\n".join(json.dumps(d) for d in data) + "\n")
    out = tmp_path / "dist"

    # each rank is SIGKILLed when it starts writing its second shard (torchrun then stops the other)
    killed = torchrun(ckpt, inp, out, kill_after_shards=1)
    assert killed.returncode != 0, killed.stderr[-2000:]
    partial = [json.loads(p.read_text()) for p in sorted((out / "_progress").glob("rank*.json"))]
    assert 1 <= sum(len(st["shards"]) for st in partial) <= 2 and not any(st["done"] for st in partial)

    done = torchrun(ckpt, inp, out)
    assert done.returncode == 0, done.stderr[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["world_size"] == 2 and man["n_items"] == 17
    items = sorted(i for sh in man["shards"] for r in sh["items"] for i in range(*r))
    assert items == list(range(17))  # every item exactly once
    assert {sh["rank"] for sh in man["shards"]} == {0, 1}
    assert all(i % 2 == sh["rank"] for sh in man["shards"] for r in sh["items"] for i in range(*r))
    assert not list(out.glob(".*tmp*"))

    model = HookedEncoder.from_pretrained(ckpt)
    single = harvest(model, data, HOOKS, tmp_path / "single", batch_size=2, dtype="fp32", progress=False)
    assert single["hooks"] == man["hooks"] and single["n_rows"] == man["n_rows"]
    a, b = load_harvest(out), load_harvest(tmp_path / "single")
    assert a.item_ids() == b.item_ids() == {i: f"doc-{i}" for i in range(17)}
    for hook in a.hooks:
        assert torch.equal(a.rows("token")["pos"], b.rows("token")["pos"])
        assert (a.load(hook) - b.load(hook)).abs().max() < 1e-5, hook
