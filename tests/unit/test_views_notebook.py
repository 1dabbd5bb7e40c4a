"""Notebook-first views: inline fragments, several per page, model / neuron views, long inputs, interactive plots.

Browser checks run in headless Chromium and look at screenshots (pixel statistics), not only the DOM.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import soundfile as sf
import torch

from encoderlens.analysis import (
    Labelled,
    attention_html,
    model_view_html,
    neuron_view_html,
    page,
    patch_residual,
)
from tests.unit.analysis_helpers import default_model, tiny_mlm
from tests.unit.test_analysis_views import (
    CHROMIUM,
    body_attrs,
    chromium,
    console_lines,
    decode_png,
    needs_chromium,
)


def root_attrs(dom: str) -> list[dict[str, str]]:
    """Attributes of every view root on a page, in order."""
    return [dict(re.findall(r'([\w-]+)="([^"]*)"', m)) for m in re.findall(r"<div ([^>]*class=\"el-view[^>]*)>", dom)]


def shot(url: str, tmp, height: int) -> tuple[int, int, list[bytes]]:
    png = tmp / "shot.png"
    args = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}", f"--window-size=1200,{height}", "--virtual-time-budget=5000",
        "--hide-scrollbars", f"--screenshot={png}", url,
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return decode_png(png.read_bytes())


def drawn_rows(rows: list[bytes], x_frac: float = 1.0) -> list[float]:
    """Per pixel row, the share of sampled pixels (left ``x_frac`` of the width) that are coloured, not grey."""
    out = []
    for r in rows:
        end = int(len(r) // 3 * x_frac) * 3
        px = [r[i : i + 3] for i in range(0, end, 9)]
        out.append(sum(1 for p in px if max(p) - min(p) > 12) / len(px))
    return out


def tall_runs(cover: list[float], min_len: int, level: float = 0.02) -> list[int]:
    """Lengths of runs of consecutive pixel rows with coverage above ``level`` (a drawn matrix is one tall run)."""
    runs, n = [], 0
    for c in [*cover, 0.0]:
        if c > level:
            n += 1
        else:
            if n >= min_len:
                runs.append(n)
            n = 0
    return runs


# ---------------------------------------------------------------------- without a browser
def test_views_are_inline_fragments_with_unique_ids():
    model = default_model()
    a, b = attention_html(model, "The cat sat."), attention_html(model, "A dog barked.")
    for v in (a, b):
        frag = v._repr_html_()
        assert frag.startswith("<div class='el-view el-attn' id='el-attn-") and "<html" not in frag
        assert "id='el-" not in frag.replace(frag.split("'")[3], "")  # the root is the only element with an id
        assert str(v).startswith("<!DOCTYPE html>")
    assert a.fragment.split("'")[3] != b.fragment.split("'")[3]
    res = Labelled(torch.tensor([[1.0, float("nan")], [-2.0, 0.5]]), ("layer", "pos"), {}, "t")
    frag = res._repr_html_()
    assert "el-plot" in frag and "null" in frag and "<html" not in frag
    with pytest.raises(TypeError, match="HtmlView"):
        page("<p>not a view</p>")


def test_neuron_view_data_are_the_heads_q_and_k():
    model = default_model()
    view = neuron_view_html(model, "The cat sat on the mat.", layer=1, head=3, query=2)
    batch = model.prepare_input("The cat sat on the mat.")
    _, cache = model.run_prepared_with_cache(batch, names_filter=lambda n: n.startswith("blocks.1.attn"))
    data = re.search(r"class='el-data'>(.*?)</script>", view, re.S)
    assert data is not None
    import json

    payload = json.loads(data.group(1))
    assert torch.allclose(torch.tensor(payload["q"]), cache["blocks.1.attn.hook_q"][0, :, 3], atol=1e-4)
    assert torch.allclose(torch.tensor(payload["k"]), cache["blocks.1.attn.hook_k"][0, :, 3], atol=1e-4)
    assert torch.allclose(torch.tensor(payload["pattern"]), cache["blocks.1.attn.hook_pattern"][0, 3], atol=1e-5)
    assert payload["q_labels"][0].endswith("[CLS]")
    with pytest.raises(ValueError, match="head 12 out of range"):
        neuron_view_html(model, "The cat.", layer=0, head=12)


# ---------------------------------------------------------------------- headless Chromium
@needs_chromium
def test_two_views_on_one_page_are_both_drawn(tmp_path):
    model = default_model()
    first = attention_html(model, "The quick brown fox jumps over the lazy dog.", layers=[0, 1])
    second = attention_html(model, "A man plays the guitar and sings.", layers=[2, 3])
    path = page(first, second, title="two views").save(tmp_path / "two.html")
    dom, err = chromium(path.as_uri(), tmp_path)
    assert console_lines(err) == [], console_lines(err)
    roots = root_attrs(dom)
    assert [r.get("data-status") for r in roots] == ["ok", "ok"], roots
    assert body_attrs(dom).get("data-status") == "ok"
    w, h, rows = shot(path.as_uri(), tmp_path, 1300)
    # the attention matrices sit on the left (thumbnails on the right): two tall coloured blocks = both drawn
    runs = tall_runs(drawn_rows(rows, x_frac=0.3), min_len=150)
    assert len(runs) == 2, f"expected two drawn matrices, found coloured blocks of heights {runs}"


@needs_chromium
def test_long_inputs_keep_readable_labels_and_are_not_clipped(tmp_path):
    model = tiny_mlm(max_position_embeddings=160)
    tokens = torch.randint(5, 99, (1, 150))
    path = tmp_path / "long.html"
    attention_html(model, tokens, path, layers=[0])
    dom, err = chromium(path.as_uri(), tmp_path)
    assert console_lines(err) == []
    (root,) = root_attrs(dom)
    assert root["data-status"] == "ok"
    n_labels = int(root["data-labels"])
    assert n_labels >= 2 * 150 // 3, n_labels  # at least every other... third label on each axis
    assert int(root["data-canvas-width"]) > int(root["data-grid-right"]) + 10  # room for the last rotated label
    w, h, rows = shot(path.as_uri() + "#scale=relative", tmp_path, 1300)
    # 150 rows of at least 6 px: one coloured block taller than 800 px, labels included
    assert max(tall_runs(drawn_rows(rows, x_frac=0.5), min_len=100), default=0) > 800


@needs_chromium
def test_model_view_neuron_view_and_interactive_results_share_a_page(tmp_path):
    model = default_model()
    mv = model_view_html(model, ["The cat sat on the mat.", "Dogs bark."])
    nv = neuron_view_html(model, "The cat sat on the mat.", layer=2, head=1)
    tiny = tiny_mlm()
    clean = torch.randint(5, 99, (1, 6))
    corrupt = clean.clone()
    corrupt[0, 2] = 7

    def metric(logits):
        return logits[:, 4, 11].mean()

    res = patch_residual(tiny, clean, corrupt, metric, normalize=False)
    other = Labelled(torch.randn(3, 4, 5), ("item", "layer", "head"), {}, "three axes")
    path = page(mv, nv, res.to_interactive_html(), other.to_interactive_html()).save(tmp_path / "mv.html")
    dom, err = chromium(path.as_uri() + "#layer=3&head=5&query=4&cell=1,2&zoom=0-1,1-4", tmp_path)
    assert console_lines(err) == [], console_lines(err)
    roots = root_attrs(dom)
    assert [r["data-status"] for r in roots] == ["ok"] * 4, roots
    assert body_attrs(dom)["data-status"] == "ok"
    # model view: every layer x head as a thumbnail, zoomed into the head the fragment names
    assert roots[0]["data-layer"] == "3" and roots[0]["data-head"] == "5"
    assert dom.split("el-neuron")[0].count("<figure") == model.cfg.n_layers * model.cfg.n_heads
    assert roots[1]["data-query"] == "4"
    # result plot: the read-out of a cell (what hovering shows) and the zoomed range
    assert roots[2]["data-zoom"] == "0-1,1-4"
    assert roots[2]["data-readout"] == f"layer=L1, pos={res.labels['pos'][2]} : {float(res.values[1, 2]):.4f}"
    w, h, rows = shot(path.as_uri(), tmp_path, 2200)
    # model view grid, neuron rows and two heatmaps: many coloured blocks down the page
    assert len(tall_runs(drawn_rows(rows), min_len=20)) >= 4


def test_audio_items_are_named_by_file_and_time(tmp_path):
    from tests.unit.test_analysis_audio import build, waves

    model, _ = build(tmp_path, pre_ln=True)
    files = []
    for i, w in enumerate(waves()):
        f = tmp_path / f"clip{i}.wav"
        sf.write(str(f), w, 16000)
        files.append(str(f))
    view = attention_html(model, files)
    names = re.search(r'"items":\[(.*?)\]', view)
    assert names is not None and "clip0.wav (0.00-0.0" in names.group(1) and "clip1.wav" in names.group(1)
    assert names.group(1).count("clip") == 2
