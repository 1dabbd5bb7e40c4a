"""Fault injection for harvest: a crash at every write step, a real SIGKILL, concurrent writers, another
model, a read-only and a full output folder. Each time: nothing lost, nothing duplicated, a clear message."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from encoderlens.harvest import harvest, load_harvest, lock, writer
from encoderlens.harvest.lock import FolderLock, HarvestLockedError
from tests.conftest import randomize_norms, save_tiny, tiny_bert_tokenizer
from tests.unit.test_harvest import texts

SRC = str(Path(__file__).resolve().parents[2] / "src")
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
KW = dict(batch_size=2, dtype="fp32", items_per_shard=2, progress=False)
DATA = texts(9, seed=7)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from transformers import BertConfig, BertModel

    tmp = tmp_path_factory.mktemp("faults")
    cfg = BertConfig(
        vocab_size=99, hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
        max_position_embeddings=40, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    hf = BertModel(cfg, add_pooling_layer=False).eval()
    randomize_norms(hf)
    return save_tiny(hf, tmp, tiny_bert_tokenizer(tmp))


@pytest.fixture(scope="module")
def model(ckpt):
    from encoderlens import HookedEncoder

    return HookedEncoder.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "h"
    harvest(model, DATA, HOOKS, out, **KW)
    return load_harvest(out)


def assert_same_as_reference(out: Path, reference) -> None:
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["n_items"] == len(DATA)
    items = sorted(i for sh in man["shards"] for r in sh["items"] for i in range(*r))
    assert items == list(range(len(DATA)))  # every item exactly once
    h = load_harvest(out)
    for hook in HOOKS:
        assert torch.equal(h.load(hook), reference.load(hook)), hook
    assert torch.equal(h.rows("token")["item"], reference.rows("token")["item"])
    assert not [p for p in out.rglob(".*tmp*")]


class Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way catches it."""


def crash_on(monkeypatch, target, attr, when, nth=2):
    """Make ``target.attr`` raise :class:`Crash` on its ``nth`` call for which ``when(*args)`` holds."""
    real = getattr(target, attr)
    calls = []

    def fake(*args, **kwargs):
        if when(*args):
            calls.append(1)
            if len(calls) == nth:
                raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, fake)


def partial_save(monkeypatch):
    """The process dies half-way through writing a shard: the temporary file holds half the bytes."""
    from encoderlens.harvest import writer

    real = writer.write_synced
    calls = []

    def fake(path, data):
        calls.append(1)
        if len(calls) == 2:
            real(path, data[: len(data) // 2])
            raise Crash
        return real(path, data)

    monkeypatch.setattr(writer, "write_synced", fake)


STEPS = {
    "shard bytes": partial_save,
    "shard fsync": lambda m: crash_on(m, os, "fsync", lambda fd: True, nth=3),
    "shard rename": lambda m: crash_on(m, os, "replace", lambda a, b: str(b).endswith(".safetensors")),
    "progress rename": lambda m: crash_on(m, os, "replace", lambda a, b: Path(b).name.startswith("rank0")),
    "manifest rename": lambda m: crash_on(m, os, "replace", lambda a, b: Path(b).name == "manifest.json", nth=3),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_crash_at_every_write_step_resumes_to_the_same_result(step, model, reference, tmp_path, monkeypatch):
    out = tmp_path / "h"
    with monkeypatch.context() as m:
        STEPS[step](m)
        with pytest.raises(Crash):
            harvest(model, DATA, HOOKS, out, **KW)
    assert not load_harvest(out).complete
    harvest(model, DATA, HOOKS, out, **KW)
    assert_same_as_reference(out, reference)


WORKER = """
import os, signal, sys
from pathlib import Path
from encoderlens import HookedEncoder
from encoderlens.harvest import harvest
from tests.unit.test_harvest_faults import DATA, HOOKS, KW
real = os.replace
n = []
def replace(a, b):
    if Path(b).name == "rank000.json":
        n.append(1)
        if len(n) == 3:  # the second shard is renamed into place; its progress entry never gets written
            os.kill(os.getpid(), signal.SIGKILL)
    return real(a, b)
os.replace = replace
harvest(HookedEncoder.from_pretrained(sys.argv[1]), DATA, HOOKS, sys.argv[2], **KW)
"""


def run_python(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + str(Path(SRC).parent), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_real_sigkill_between_shard_and_progress_leaves_nothing_twice(ckpt, model, reference, tmp_path):
    out = tmp_path / "h"
    proc = run_python(textwrap.dedent(WORKER), str(ckpt), str(out))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    listed = json.loads((out / "_progress" / "rank000.json").read_text())["shards"]
    assert len(listed) == 1 and (out / "rank000-00001.safetensors").exists()  # the unlisted shard
    with pytest.warns(UserWarning, match="ended without releasing"):  # the dead process's lock, reported
        harvest(model, DATA, HOOKS, out, **KW)
    assert_same_as_reference(out, reference)


HOLDER = """
import sys, time
from pathlib import Path
from encoderlens.harvest.lock import FolderLock
out = Path(sys.argv[1]); (out / "_progress").mkdir(parents=True, exist_ok=True)
held = FolderLock(out, int(sys.argv[2]), int(sys.argv[3])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def holder(out: Path, rank: int = 0, world_size: int = 1):
    env = {**os.environ, "PYTHONPATH": SRC}
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(out), str(rank), str(world_size)],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        yield p
    finally:
        p.kill()
        p.wait()


def test_concurrent_writers_are_refused_and_a_dead_ones_lock_is_reported(model, reference, tmp_path):
    out = tmp_path / "h"
    with holder(out) as p:
        with pytest.raises(HarvestLockedError, match=f"pid {p.pid}"):
            harvest(model, DATA, HOOKS, out, **KW)
    assert not list(out.glob("*.safetensors"))
    with holder(out, rank=1, world_size=2) as p:  # a rank of another run: their shares would overlap
        with pytest.raises(HarvestLockedError, match="store items twice"):
            harvest(model, DATA, HOOKS, out, **KW)
    # both holders were SIGKILLed: their lock files remain, nobody holds them
    with pytest.warns(UserWarning, match="no longer running"):
        harvest(model, DATA, HOOKS, out, **KW)
    assert_same_as_reference(out, reference)
    with FolderLock(out, 0), pytest.raises(HarvestLockedError, match="another harvest"):  # same process, too
        harvest(model, DATA, HOOKS, out, **KW)


def test_ranks_of_a_killed_torchrun_agent_stop_before_committing(model, tmp_path, monkeypatch):
    out = tmp_path / "h"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    parents = iter([4242] + [1] * 100)  # the agent, then init (the agent died: the rank was re-parented)
    monkeypatch.setattr(lock.os, "getppid", lambda: next(parents))
    with pytest.raises(HarvestLockedError, match="torchrun agent"):
        harvest(model, DATA, HOOKS, out, **KW)
    assert not list(out.glob("*.safetensors"))
    assert json.loads((out / "_progress" / "rank000.json").read_text())["shards"] == []


def test_resume_with_another_model_is_refused_naming_what_differs(model, tmp_path):
    out = tmp_path / "h"
    harvest(model, DATA[:4], HOOKS, out, **KW)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[1].mlp.W_out[0, 0] += 1.0  # a fine-tune touching one weight
    with pytest.raises(ValueError, match=r"another model \(weights differ"):
        harvest(other, DATA, HOOKS, out, **KW)
    other = copy.deepcopy(model)
    other.tokenizer = tiny_bert_tokenizer(tmp_path, vocab_size=98)
    with pytest.raises(ValueError, match=r"tokenizer differ"):
        harvest(other, DATA, HOOKS, out, **KW)
    assert load_harvest(out).manifest["n_items"] == 4  # nothing was mixed in


def test_debris_of_interrupted_writes_is_cleaned_on_resume(model, tmp_path):
    out = tmp_path / "h"
    harvest(model, DATA[:4], HOOKS, out, **KW)
    dead = 2**22 + 12345  # above Linux's pid_max: no such process
    debris = [
        out / "_progress" / f".rank000.json.tmp-{dead}",  # a progress file being replaced
        out / f".manifest.json.tmp-{dead}",  # the manifest being replaced
        out / ".rank003-00000.safetensors.tmp-17",  # a shard of a rank of an earlier, larger run
    ]
    for p in debris:
        p.write_bytes(b"partial")
    harvest(model, DATA, HOOKS, out, **KW)
    assert [p for p in debris if p.exists()] == []


def test_rerun_with_fewer_items_keeps_what_exists_and_says_so(model, tmp_path):
    out = tmp_path / "h"
    harvest(model, DATA, HOOKS, out, **KW)
    with pytest.warns(UserWarning, match="keeping them all"):
        man = harvest(model, DATA, HOOKS, out, max_items=3, **KW)
    assert man["complete"] and man["n_items"] == len(DATA) and man["n_items_expected"] == len(DATA)


def test_shards_honour_the_umask(model, tmp_path):
    old = os.umask(0o022)
    try:
        harvest(model, DATA[:2], HOOKS, tmp_path / "h", **KW)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "h").glob("*.safetensors")}
    assert modes and set(modes.values()) == {0o644}, modes


def test_a_killed_shard_write_leaves_only_temporary_files_a_resume_removes(tmp_path, monkeypatch):
    """Shards are serialised in memory and written by us: safetensors' own writer makes a ``.tmpXXXXXX``
    file in the folder that a writer killed mid-write leaves behind and no resume cleans (a two-process
    harvest killed by torchrun left one)."""
    import safetensors.torch

    from encoderlens.harvest import writer

    def refuse(*args, **kwargs):
        raise AssertionError("safetensors.torch.save_file writes through a temporary file of its own")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    writer.save_shard_atomic(tmp_path / "rank000-00000.safetensors", tensors, {"k": "v"})
    assert [p.name for p in tmp_path.iterdir()] == ["rank000-00000.safetensors"]
    loaded = safetensors.torch.load_file(tmp_path / "rank000-00000.safetensors")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0  # fmt: skip


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_a_read_only_folder_says_so(model, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    mounted = _mount_tmpfs(out, "ro,size=1m")
    try:
        if not mounted:  # no mount: a patched open that the file system refuses

            def refuse(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system", str(args[0]))

            monkeypatch.setattr(lock, "open", refuse, raising=False)
            (out / "_progress").mkdir(parents=True, exist_ok=True)
        with pytest.raises(OSError, match="read-only") as exc:
            harvest(model, DATA, HOOKS, out, **KW)
        assert "could not write" in str(exc.value) and "_progress" in str(exc.value)
    finally:
        if mounted:
            _umount(out)


def test_a_full_folder_says_so_and_resumes_once_there_is_space(model, reference, tmp_path, monkeypatch):
    out = tmp_path / "full"
    mounted = _mount_tmpfs(out, "size=48k")
    try:
        if not mounted:  # no tmpfs: a patched writer that runs out of space at the third shard
            real = writer.save_shard_atomic
            calls = []

            def no_space(*args, **kwargs):
                calls.append(1)
                if len(calls) == 3:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(*args, **kwargs)

            monkeypatch.setattr(writer, "save_shard_atomic", no_space)
        with pytest.raises(OSError, match="free space") as exc:
            harvest(model, DATA, HOOKS, out, **KW)
        assert "No space left on device" in str(exc.value) and "resumes" in str(exc.value)
        h = load_harvest(out)
        assert 0 < h.manifest["n_items"] < len(DATA) and all(p.exists() for p in h.shard_paths())
        monkeypatch.undo()
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=8m", str(out)], check=True)
        harvest(model, DATA, HOOKS, out, **KW)
        assert_same_as_reference(out, reference)
    finally:
        if mounted:
            _umount(out)


def test_a_failing_harvest_command_exits_non_zero_with_one_line(ckpt, tmp_path, capsys):
    from encoderlens.cli import main
    from encoderlens.harvest import command

    argv = ["harvest", str(ckpt), "--input", str(tmp_path / "missing.jsonl"), "--hooks", "blocks.0.hook_resid_post"]
    argv += ["--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("encoderlens harvest: error: input file") and "Traceback" not in "".join(err)
    assert command.main(argv[1:]) == 2  # python -m encoderlens.harvest
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not exist"):
        main(["--debug", *argv])
