"""Labelled results: validation, selection, text / HTML / matplotlib output."""

from __future__ import annotations

import builtins

import pytest
import torch

from encoderlens.analysis import Labelled
from encoderlens.analysis.results import stack_labelled


def grid() -> Labelled:
    vals = torch.tensor([[0.1, -0.5, 0.2], [0.9, 0.0, float("nan")]])
    return Labelled(vals, ("layer", "pos"), {"layer": ["L0", "L1"], "pos": ["0:a", "1:b", "2:c"]}, "effects")


def test_validation():
    with pytest.raises(ValueError, match="axis names"):
        Labelled(torch.zeros(2, 3), ("layer",), {})
    with pytest.raises(ValueError, match="3 entries but 2 labels"):
        Labelled(torch.zeros(2, 3), ("layer", "pos"), {"pos": ["a", "b"]})
    with pytest.raises(ValueError, match="distinct"):
        Labelled(torch.zeros(2, 2), ("a", "a"), {})
    with pytest.raises(ValueError, match="unknown axes"):
        Labelled(torch.zeros(2), ("a",), {"b": ["x"]})
    with pytest.raises(TypeError, match="Tensor"):
        Labelled([1, 2], ("a",), {})
    assert Labelled(torch.zeros(2), ("a",), {}).labels == {"a": ["0", "1"]}


def test_selection_and_summaries():
    r = grid()
    assert r.shape == (2, 3) and "layer=2" in repr(r)
    row = r.sel(layer="L1")
    assert isinstance(row, Labelled) and row.axes == ("pos",) and row.values[0].item() == pytest.approx(0.9)
    assert r.sel(layer=0, pos="1:b") == pytest.approx(-0.5)
    assert r.top(1) == [({"layer": "L1", "pos": "0:a"}, pytest.approx(0.9))]
    assert r.top(1, largest=False)[0][0] == {"layer": "L0", "pos": "1:b"}
    assert r.top(2, absolute=True)[1][0] == {"layer": "L0", "pos": "1:b"}
    assert r.transpose("pos", "layer").values[2, 0].item() == pytest.approx(0.2)
    mean = r.mean("pos")
    assert mean.values.tolist() == pytest.approx([-0.2 / 3, 0.45])  # NaN ignored
    d = r.to_dict()
    assert d["values"][1][2] is None and d["axes"] == ["layer", "pos"]
    with pytest.raises(ValueError, match="no label"):
        r.sel(layer="L9")
    with pytest.raises(IndexError):
        r.sel(layer=5)
    with pytest.raises(ValueError, match="no axis"):
        r.sel(head=0)
    s = stack_labelled([r, r], "run", ["a", "b"])
    assert s.axes == ("run", "layer", "pos") and s.shape == (2, 2, 3)


def test_text_and_html():
    r = grid()
    text = r.to_text()
    assert "effects" in text and "+0.900" in text and "nan" in text
    html = r.to_html()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http" not in html
    assert html.count("<td") == 6 and "rgb(255," in html
    assert "<table>" in Labelled(torch.tensor([1.0, -1.0]), ("head",), {}).to_html()
    three = Labelled(torch.zeros(2, 2, 2), ("a", "b", "c"), {}, "cube")
    assert three.to_html().count("<table>") == 2 and "cube [a=0]" in three.to_text()


def test_plot_needs_matplotlib_or_explains(monkeypatch):
    r = grid()
    try:
        import matplotlib

        matplotlib.use("Agg")
        have = True
    except ImportError:
        have = False
    if have:
        ax = r.plot()
        assert ax.get_title() == "effects" and [t.get_text() for t in ax.get_yticklabels()] == ["L0", "L1"]
        ax1 = Labelled(torch.tensor([1.0, 2.0]), ("head",), {}).plot()
        assert len(ax1.patches) == 2
        with pytest.raises(ValueError, match="1-D or 2-D"):
            Labelled(torch.zeros(2, 2, 2), ("a", "b", "c"), {}).plot()
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install matplotlib.*to_html"):
        r.plot()
