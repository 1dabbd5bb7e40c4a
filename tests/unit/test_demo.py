"""The offline demo runs on the embedded model and finds real structure."""

from __future__ import annotations

import subprocess
import sys

from encoderlens.cli import main, run_demo


def test_demo_report():
    lines: list[str] = []
    report = run_demo(out=lines.append)
    text = "\n".join(lines)
    assert "6 layers" in text and "blocks.0.attn.hook_pattern" in text
    # all-MiniLM-L6-v2 has a strong previous-token head in layer 0
    assert report["previous token"][0].startswith("L0H2")
    (_, _, sims_close, _), (_, _, sims_far, _) = report["similarity"]
    assert sims_close[-1] > sims_far[-1] + 0.3  # paraphrases end up closer than unrelated sentences


def test_cli_demo_and_errors(capsys):
    assert main(["demo"]) == 0
    assert "Sentence-pair similarity" in capsys.readouterr().out
    assert main(["demo", "--model", "/nonexistent/folder/x"]) == 2
    assert "error" in capsys.readouterr().err


def test_python_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "encoderlens", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "demo" in res.stdout
