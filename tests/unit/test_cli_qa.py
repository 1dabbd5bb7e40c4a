"""``encoderlens predict`` and ``patch`` on a question-answering checkpoint: the best span, a span metric."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForQuestionAnswering, BertTokenizerFast

from encoderlens import HookedEncoder
from encoderlens.cli import main
from tests.conftest import randomize_norms
from tests.unit.analysis_helpers import SPECIALS, WORDS, tiny_config


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "qa"
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(SPECIALS + WORDS)}, do_lower_case=True)
    torch.manual_seed(0)
    hf = BertForQuestionAnswering(tiny_config(vocab_size=len(SPECIALS) + len(WORDS))).eval()
    randomize_norms(hf)
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_predict_prints_the_best_span(capsys, qa_folder):
    text = "the cat sat on the mat and the dog ran"
    assert main(["predict", str(qa_folder), text]) == 0
    out = capsys.readouterr().out
    model = HookedEncoder.from_pretrained(qa_folder)
    with torch.no_grad():
        qa = model(text)[0]
    n = qa.shape[0]
    best = max(((i, j) for i in range(n) for j in range(i, min(n, i + 15))), key=lambda s: qa[s[0], 0] + qa[s[1], 1])
    assert f"answer span {best[0]}..{best[1]}:" in out
    assert f"start logit {float(qa[best[0], 0]):+.3f}" in out


def test_patch_uses_a_span_metric(capsys, qa_folder):
    code = main(
        ["patch", str(qa_folder), "--clean", "the cat sat on the mat", "--corrupt", "the dog sat on the mat",
         "--target", "resid", "--no-progress"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "log p(clean start) + log p(clean end)" in out
    # layer 0's input at the swapped token restores the clean run exactly (normalised to 1)
    line = next(line for line in out.splitlines() if line.startswith("L0"))
    assert float(line.split()[3]) == pytest.approx(1.0, abs=1e-3)


def test_patch_measures_the_span_predict_prints_even_when_best_start_and_end_cross(capsys, tmp_path):
    """End logits = -start logits: the best start lies after the best end. The metric used to take the two
    argmaxes apart (an impossible span); it now reads the clean answer span ``predict`` prints."""
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(SPECIALS + WORDS)}, do_lower_case=True)
    torch.manual_seed(0)
    hf = BertForQuestionAnswering(tiny_config(vocab_size=len(SPECIALS) + len(WORDS))).eval()
    randomize_norms(hf)
    with torch.no_grad():
        hf.qa_outputs.weight[1] = -hf.qa_outputs.weight[0]
        hf.qa_outputs.bias.zero_()
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clean = "the cat sat on the mat"
    model = HookedEncoder.from_pretrained(tmp_path)
    with torch.no_grad():
        lp = model(clean)[0].log_softmax(0)
    assert int(lp[:, 0].argmax()) > int(lp[:, 1].argmax())  # the independent argmaxes cross
    assert main(["predict", str(tmp_path), clean]) == 0
    start, end = (int(x) for x in capsys.readouterr().out.split("answer span ")[1].split(":")[0].split(".."))
    assert start <= end
    args = ["patch", str(tmp_path), "--clean", clean, "--corrupt", "the dog sat on the mat", "--no-progress"]
    assert main([*args, "--target", "resid"]) == 0
    out = capsys.readouterr().out
    assert f"clean {float(lp[start, 0] + lp[end, 1]):+.4f}," in out
