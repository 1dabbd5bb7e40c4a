"""Attention views: the HTML is self-contained and renders in headless Chromium without console errors.

The browser tests skip only when Debian's ``chromium`` is not installed (``make install`` installs it).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from encoderlens.analysis import AttentionView, attention_html, render_attention_html
from tests.conftest import raises_input_error
from tests.unit.analysis_helpers import default_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium; `make install` does it)"
)


# ---------------------------------------------------------------------- helpers
def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Minimal PNG reader (8-bit RGB/RGBA, not interlaced): ``(width, height, rows of RGB(A) bytes)``."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i] for i in range(len(r)) if i % channels < 3) for r in rows]


def chromium(url: str, tmp: Path, screenshot: Path | None = None) -> tuple[str, str]:
    """Load ``url`` headless; return (stdout, stderr). With ``screenshot``, also save a PNG."""
    assert CHROMIUM is not None
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1200,900",
        "--virtual-time-budget=5000",
    ]
    args.append(f"--screenshot={screenshot}" if screenshot is not None else "--dump-dom")
    proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def body_attrs(dom: str) -> dict[str, str]:
    m = re.search(r"<body([^>]*)>", dom)
    assert m, dom[:500]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))


def assert_renders(path: Path, tmp: Path, fragment: str = "", expect: dict[str, str] | None = None) -> None:
    dom, err = chromium(path.as_uri() + fragment, tmp)
    assert console_lines(err) == [], console_lines(err)
    attrs = body_attrs(dom)
    assert attrs.get("data-status") == "ok", (attrs, re.findall(r"view failed[^<]*", dom))
    for k, v in (expect or {}).items():
        assert attrs.get(f"data-{k}") == v, (k, attrs)


def assert_screenshot_not_blank(path: Path, tmp: Path, fragment: str = "") -> None:
    png = tmp / "shot.png"
    _, err = chromium(path.as_uri() + fragment, tmp, screenshot=png)
    assert console_lines(err) == [], console_lines(err)
    w, h, rows = decode_png(png.read_bytes())
    assert (w, h) == (1200, 900)
    pixels = [r[i : i + 3] for r in rows[::4] for i in range(0, len(r), 12)]
    non_white = sum(1 for p in pixels if min(p) < 235)
    assert non_white / len(pixels) > 0.01, "screenshot is (almost) blank"
    assert len(set(pixels)) > 20, "screenshot has hardly any colours"


def synthetic_views() -> tuple[list[AttentionView], list[str]]:
    """Encoder-decoder style views (encoder self, decoder self, cross) on a padded batch of 2."""
    g = torch.Generator().manual_seed(0)
    enc = torch.rand(2, 2, 3, 6, 6, generator=g).softmax(-1)
    dec = torch.rand(2, 2, 3, 4, 4, generator=g).tril().softmax(-1)
    cross = torch.rand(2, 2, 3, 4, 6, generator=g).softmax(-1)
    em = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    dm = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    etok = [["<s>", "Hello", "big", "world", "!", "</s>"], ["<s>", "Hi", "you", "</s>", "<pad>", "<pad>"]]
    dtok = [["<s>", "Hallo", "Welt", "</s>"], ["<s>", "Hi", "</s>", "<pad>"]]
    views = [
        AttentionView("encoder", "encoder self-attention", enc, em, em, etok, etok),
        AttentionView("decoder", "decoder self-attention", dec, dm, dm, dtok, dtok),
        AttentionView("cross", "cross-attention", cross, dm, em, dtok, etok),
    ]
    return views, ["0: Hello big world!", "1: Hi you"]


# ---------------------------------------------------------------------- tests without a browser
def test_html_is_self_contained(tmp_path):
    doc = attention_html(default_model(), ["The cat sat on the mat.", "Dogs bark."], tmp_path / "a.html")
    assert (tmp_path / "a.html").read_text() == doc
    assert "<script src" not in doc and "<link" not in doc
    assert not re.search(r"https?://", doc), "the page must not reference the network"
    assert "el-data" in doc and "[CLS]" in doc


def test_payload_crops_padding_and_guards_size():
    views, items = synthetic_views()
    doc = render_attention_html(views, items)
    assert '"nq":3' in doc and '"nk":4' in doc  # item 1 of the cross view: 3 real queries, 4 real keys
    with pytest.raises(ValueError, match="MiB"):
        render_attention_html(views, items, max_bytes=100)
    with pytest.raises(ValueError, match="item names"):
        render_attention_html(views, items[:1])
    with pytest.raises(ValueError, match="no attention view"):
        render_attention_html([], items)
    one = torch.ones(1, 2, dtype=torch.long)
    with raises_input_error(ValueError, "patterns must be", param="patterns"):  # 3-D patterns: not an AttentionView's
        render_attention_html(
            [AttentionView("x", "x", torch.zeros(2, 2, 2), one, one, [["a", "b"]], [["a", "b"]])], ["0"]
        )


def test_layer_selection(tmp_path):
    doc = attention_html(default_model(), "Hello there.", layers=[0, -1])
    assert '"n_layers":2' in doc and '"self":["L0","L5"]' in doc
    with pytest.raises(ValueError, match="selects nothing"):
        attention_html(default_model(), "Hello there.", layers=[40])


# ---------------------------------------------------------------------- headless Chromium
@needs_chromium
def test_text_view_renders_without_errors(tmp_path):
    path = tmp_path / "text.html"
    attention_html(default_model(), ["The quick brown fox jumps over the lazy dog.", "A man plays guitar."], path)
    assert_renders(path, tmp_path, expect={"view": "self", "item": "0", "layer": "0", "head": "mean"})
    assert_renders(
        path,
        tmp_path,
        "#item=1&layer=3&head=2&query=2&scale=sqrt",
        expect={"view": "self", "item": "1", "layer": "3", "head": "2"},
    )
    assert_screenshot_not_blank(path, tmp_path, "#layer=2&query=1")


@needs_chromium
def test_encoder_decoder_views_render(tmp_path):
    views, items = synthetic_views()
    path = tmp_path / "encdec.html"
    path.write_text(render_attention_html(views, items, "encoder-decoder"))
    assert_renders(
        path, tmp_path, "#view=cross&item=1&layer=1&head=mean&query=0", expect={"view": "cross", "item": "1"}
    )
    assert_renders(path, tmp_path, "#view=decoder&head=2", expect={"view": "decoder", "head": "2"})
    assert_screenshot_not_blank(path, tmp_path, "#view=cross")


@needs_chromium
def test_audio_view_with_time_axis_renders(tmp_path):
    g = torch.Generator().manual_seed(1)
    frames = 120
    scores = -((torch.arange(frames)[:, None] - torch.arange(frames)[None]).abs().float()) / 3
    pat = (scores[None, None, None] + torch.rand(2, 2, 2, frames, frames, generator=g)).softmax(-1)
    mask = torch.ones(2, frames, dtype=torch.long)
    mask[1, 90:] = 0
    labels = [[str(i) for i in range(frames)]] * 2
    view = AttentionView("self", "self-attention", pat, mask, mask, labels, labels, axis="time", frame_seconds=0.02)
    path = tmp_path / "audio.html"
    doc = render_attention_html([view], ["clip a", "clip b"], "audio")
    assert '"axis":"time"' in doc and '"frame_seconds":0.02' in doc
    path.write_text(doc)
    assert_renders(
        path, tmp_path, "#item=1&head=1&query=10&scale=relative", expect={"item": "1", "head": "1", "scale": "relative"}
    )
    assert_screenshot_not_blank(path, tmp_path, "#scale=relative&query=30")


@needs_chromium
def test_broken_data_is_reported_not_silent(tmp_path):
    """The page flags a failure (data-status=error) so the checks above can fail."""
    views, items = synthetic_views()
    doc = render_attention_html(views, items).replace('"n_heads":3', '"n_heads":"three"', 1)
    doc = doc.replace("el-data'>{", "el-data'>{broken", 1)
    path = tmp_path / "broken.html"
    path.write_text(doc)
    dom, _ = chromium(path.as_uri(), tmp_path)
    assert body_attrs(dom).get("data-status") == "error"
    assert "view failed" in dom


# ---------------------------------------------------------------------- hostile strings
PWN = "document.body.setAttribute('data-pwned','1')"
HOSTILE = [
    "<!--",
    "<script>" + PWN + "</script>",
    "</script><script>" + PWN + "</script>",
    '<img src=x onerror="' + PWN + '">',
    "a & b &amp; ]]> -->",
    "line\u2028sep\u2029par",
]


def hostile_views() -> tuple[list[AttentionView], list[str]]:
    g = torch.Generator().manual_seed(2)
    n = len(HOSTILE)
    pat = torch.rand(2, 2, 2, n, n, generator=g).softmax(-1)
    mask = torch.ones(2, n, dtype=torch.long)
    labels = [HOSTILE, list(reversed(HOSTILE))]
    return [AttentionView("self", "self <script>" + PWN + "</script>", pat, mask, mask, labels, labels)], [
        "<!-- item",
        "</script><script>" + PWN + "</script>",
    ]


def test_embedded_json_escapes_markup_and_line_separators():
    import json

    views, items = hostile_views()
    doc = render_attention_html(views, items, title="<script>" + PWN + "</script>")
    blob = re.search(r"class='el-data'>(.*?)</script>", doc, re.S)
    assert blob is not None
    text = blob.group(1)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text, bad
    data = json.loads(text)
    assert data["items"] == items and data["views"]["self"]["items"][0]["q_labels"] == HOSTILE
    assert doc.count("<script") == 2  # the data element and the page's own code, nothing from the tokens


@needs_chromium
def test_hostile_tokens_render_and_run_no_injected_script(tmp_path):
    views, items = hostile_views()
    path = tmp_path / "hostile.html"
    path.write_text(render_attention_html(views, items, title="<!-- <script>" + PWN + "</script>"))
    for fragment in ("", "#item=1&query=1", "#view=constructor", "#view=__proto__&layer=1", "#view=toString"):
        dom, err = chromium(path.as_uri() + fragment, tmp_path)
        assert console_lines(err) == [], (fragment, console_lines(err))
        attrs = body_attrs(dom)
        assert attrs.get("data-status") == "ok", (fragment, attrs, re.findall(r"view failed[^<]*", dom))
        assert attrs.get("data-view") == "self", (fragment, attrs)
        assert "data-pwned" not in attrs, fragment
        assert "<img" not in dom
