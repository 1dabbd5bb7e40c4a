"""The ``encoderlens`` command's errors and consistency: one line, non-zero exit, ``--debug``; one dtype
spelling, ``--device`` everywhere, ``inspect --json`` numbers, help with defaults and examples; readers
that name an unreadable file; ``Labelled`` hints and per-item tables."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

import encoderlens
from encoderlens.analysis.results import Labelled
from encoderlens.cli import build_parser, main
from tests.unit.analysis_helpers import default_model


@pytest.fixture(autouse=True)
def cached_default(monkeypatch):
    real = encoderlens.from_pretrained
    monkeypatch.setattr(
        encoderlens,
        "from_pretrained",
        lambda name=None, **kw: default_model() if name == "default" else real(name, **kw),
    )


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cache_with_empty_hooks_is_an_error(capsys, tmp_path):
    out = tmp_path / "a.safetensors"
    code, _, err = run(capsys, "cache", "default", "x", "--hooks", ",", "--out", str(out))
    assert code == 2 and "names no hook" in err and not out.exists()


def test_patch_answer_without_an_mlm_head_is_an_error(capsys):
    code, _, err = run(capsys, "patch", "default", "--clean", "The cat sat.", "--corrupt", "The dog sat.", "--answer", "cat")  # fmt: skip
    assert code == 2 and "--answer/--wrong" in err and "no output head" in err


def test_failures_are_one_line_non_zero_and_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    code, _, err = run(capsys, "inspect", "default", "--hooks", "nothing.*")
    assert code == 2 and len(err.strip().splitlines()) == 2  # "loading default ..." and the error
    assert err.strip().splitlines()[-1].startswith("encoderlens inspect: error: --hooks 'nothing.*' matches no hook")
    with pytest.raises(ValueError, match="matches no hook"):
        main(["inspect", "default", "--hooks", "nothing.*", "--debug"])
    with pytest.raises(ValueError, match="matches no hook"):
        main(["--debug", "inspect", "default", "--hooks", "nothing.*"])

    def boom(*args, **kwargs):  # an unexpected failure (not a user error): exit 1, still one line
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(encoderlens, "from_pretrained", boom)
    code, _, err = run(capsys, "predict", "default", "x")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "encoderlens predict: error: disk on fire second line (--debug shows the traceback)"
    )


def test_every_subcommand_fails_non_zero_with_a_message(capsys, tmp_path):
    bad = str(tmp_path / "no-such-model")
    for argv in (
        ["demo", "--model", bad],
        ["inspect", bad],
        ["predict", bad, "x"],
        ["cache", bad, "x", "--hooks", "hook_embed", "--out", str(tmp_path / "a.safetensors")],
        ["attention", bad, "x", "--html", str(tmp_path / "a.html")],
        ["patch", bad, "--clean", "a", "--corrupt", "b"],
        ["harvest", bad, "--input", str(tmp_path / "x.jsonl"), "--hooks", "hook_embed", "--out", str(tmp_path / "o")],
    ):
        code, _, err = run(capsys, *argv)
        assert code != 0, argv
        assert f"encoderlens {argv[0]}: error: " in err and "Traceback" not in err, argv


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_cli_consistency_dtypes_device_help(capsys):
    subs = _subparsers(build_parser())
    for name, p in subs.items():
        opts = {o for a in p._actions for o in a.option_strings}
        assert "--device" in opts, name  # every command runs a model
        assert "--debug" in opts, name
        assert p.epilog and p.epilog.startswith("example:") and f"encoderlens {name}" in p.epilog, name
        helptext = " ".join(p.format_help().split())
        for a in p._actions:
            if a.help != argparse.SUPPRESS and a.default not in (None, False, argparse.SUPPRESS) and not a.required:
                assert f"(default: {a.default})" in helptext, (name, a.dest)
        for a in p._actions:
            if "--dtype" in a.option_strings:
                assert set(a.choices) == {"float32", "float16", "bfloat16"}, name


def test_inspect_json_numbers_and_opt_in_hooks(capsys):
    code, out, _ = run(capsys, "inspect", "default", "--json", "--hooks", "blocks.0.attn.hook_*")
    data = json.loads(out)
    assert code == 0 and data["info"]["n_layers"] == 6 and data["info"]["n_heads"] == 12
    assert isinstance(data["info"]["parameters"], int) and isinstance(data["info"]["hook points"], int)
    shapes = {h["name"]: h["shape"] for h in data["hooks"]}
    assert shapes["blocks.0.attn.hook_result"] == [1, 4, 12, 384]  # opt-in: computed when listed
    code, out, _ = run(capsys, "inspect", "default", "--hooks", "blocks.0.attn.hook_result")
    assert "not reached" not in out and "(1, 4, 12, 384)" in out


def test_cache_files_honour_the_umask(capsys, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "a.safetensors"
        code, _, _ = run(capsys, "cache", "default", "x", "--hooks", "embed.hook_embed", "--out", str(out))
    finally:
        os.umask(old)
    assert code == 0 and out.stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_truncated_harvest_shard_names_the_file(tmp_path):
    from encoderlens.harvest import harvest, load_harvest

    harvest(default_model(), ["a cat", "a dog"], ["blocks.0.hook_resid_post"], tmp_path / "h", progress=False)
    h = load_harvest(tmp_path / "h")
    shard = h.shard_paths()[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{shard.name}.*truncated"):
        h.load("blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=shard.name):
        h.item_ids()


def test_labelled_hints_and_per_item_tables():
    pytest.importorskip("matplotlib")
    res = Labelled(torch.arange(12.0).reshape(2, 3, 2), ("layer", "pos", "item"), {}, title="effect")
    with pytest.raises(ValueError, match=r"res\.sel\(item=0\) or res\.mean\('item'\)"):
        res.plot()
    text = res.to_text()
    assert text.count("effect") == 1  # one table, not one per layer
    lines = text.splitlines()
    assert lines[2].split()[:3] == ["item", "0", "0"] and len(lines) == 2 + 2 * 2
    assert "item 1 1" in res.to_html()
    other = Labelled(torch.zeros(2, 2, 2), ("layer", "head", "pos"), {})
    with pytest.raises(ValueError, match=r"res\.sel\(layer=0\)"):
        other.plot()
