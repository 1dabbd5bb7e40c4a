"""A new family plugs into every analysis tool by implementing the model contract, with no edit in analysis/.

``ToySensorEncoder`` is a family the analysis toolkit has never heard of: its inputs are multichannel sensor
recordings (float arrays of unequal lengths, one position per time step of 0.1 s), built from our hooked
components (a projection, pre-LN blocks, a final norm) with a linear classification readout per step.
It implements only what :class:`~encoderlens.models.base.HookedModel` declares.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

import encoderlens.analysis as analysis_pkg
from encoderlens.analysis import (
    attention_html,
    attribute_residual,
    decompose,
    direct_logit_attribution,
    head_scores,
    logit_diff,
    logit_lens,
    patch_heads,
    patch_residual,
)
from encoderlens.cache import StreamSpec
from encoderlens.components.attention import build_additive_mask
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.norm import make_norm
from encoderlens.config import AttentionConfig, MLPConfig, NormConfig, StackConfig
from encoderlens.hooks import HookPoint
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import ExampleInput, Prepared, Readout, frame_position_labels

STEP = 0.1  # seconds per position


class ToySensorEncoder(HookedModel):
    """Sensor recordings ``(time, channels)`` -> per-step class logits; hooks on every activation."""

    family: ClassVar[str] = "toy_sensor"

    def __init__(self, d_in: int = 5, d_model: int = 24, n_layers: int = 3, n_heads: int = 4, n_out: int = 7) -> None:
        super().__init__()
        self.cfg = StackConfig(
            n_layers=n_layers,
            d_model=d_model,
            attn=AttentionConfig(n_heads=n_heads, d_head=d_model // n_heads),
            mlp=MLPConfig(d_mlp=2 * d_model, act_fn="gelu"),
            norm=NormConfig(eps=1e-5),
            norm_position="pre",
            final_norm=True,
        )
        self.W_in = nn.Parameter(torch.randn(d_in, d_model) / d_in**0.5)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(self.cfg, layer=i) for i in range(n_layers)])
        self.ln_final = make_norm(d_model, self.cfg.norm)
        self.W_U = nn.Parameter(torch.randn(d_model, n_out) / d_model**0.5)
        self.b_U = nn.Parameter(torch.randn(n_out) * 0.1)
        g = torch.Generator().manual_seed(0)
        for name, p in self.blocks.named_parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1) + (1.0 if ".w" in name else 0))
        self.setup()

    def unembed(self, x: Tensor) -> Tensor:
        return x @ self.W_U + self.b_U

    def forward(self, values: Tensor, mask: Tensor, return_type: str | None = "logits") -> Any:
        x = self.hook_embed(values @ self.W_in)
        additive = build_additive_mask(mask.bool(), x.shape[1], x.shape[1], False, x.dtype, x.device)
        for block in self.blocks:
            x = block(x, additive_mask=additive)
        x = self.ln_final(x)
        if return_type is None:
            return None
        return x if return_type == "hidden" else self.unembed(x)

    # ---------------------------------------------------------------- the model contract, nothing else
    def _prepare_input(self, input: Any, **options: Any) -> Prepared:
        if options:
            raise TypeError(f"unexpected options {sorted(options)}")
        items = [torch.as_tensor(x, dtype=torch.float32) for x in (input if isinstance(input, list) else [input])]
        n = max(len(x) for x in items)
        values = torch.zeros(len(items), n, self.W_in.shape[0])
        mask = torch.zeros(len(items), n, dtype=torch.long)
        for i, x in enumerate(items):
            values[i, : len(x)] = x
            mask[i, : len(x)] = 1
        start = torch.arange(n, dtype=torch.float64) * STEP
        times = torch.stack([start, start + STEP], dim=-1)
        return Prepared(
            self.family,
            (values,),
            {"mask": mask},
            {None: mask},
            {None: frame_position_labels(times, mask)},
            times={None: times},
            batch_size=len(items),
            alignment_hint="Give both recordings the same number of steps.",
        )

    @property
    def default_return_type(self) -> str:
        return "logits"

    def readout(self, stream: str | None = None) -> Readout | None:
        return Readout("unembed", "classifier", self.unembed, linear=True, return_type="logits")

    def stream_spec(self, stream: str | None = None) -> StreamSpec:
        return StreamSpec(
            prefix="",
            n_layers=self.cfg.n_layers,
            n_heads=self.cfg.n_heads,
            norm_position="pre",
            embed_hooks=("hook_embed",),
            embed_normalized=False,
            final_norm="ln_final",
            has_cross_attention=False,
            blocks=self.blocks,
        )

    def example_input(self) -> ExampleInput:
        return ExampleInput(torch.randn(6, self.W_in.shape[0]), {}, "6 steps of noise")


@pytest.fixture(scope="module")
def toy() -> ToySensorEncoder:
    torch.manual_seed(0)
    return ToySensorEncoder().eval()


def recordings(seed: int, lengths: tuple[int, ...] = (6, 4)) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, generator=g) for n in lengths]


def test_prepare_input_and_example(toy):
    p = toy.prepare_input(recordings(0))
    assert p.mask(None).tolist() == [[1] * 6, [1] * 4 + [0] * 2]
    assert p.position_labels(None, 1)[:2] == ["0:0.000s", "1:0.100s"] and p.labels[None][1][-1] == "<pad>"
    assert toy.prepare_input(p) is p and p.seconds_per_position(None) == pytest.approx(STEP)
    ex = toy.example_input()
    assert toy.run_prepared(toy.prepare_input(ex.input, **ex.options)).shape == (1, 6, 7)


def test_patching_and_attribution(toy):
    clean, corrupt = recordings(1), recordings(2)
    metric = logit_diff(position=3, good=2, bad=5)
    res = patch_residual(toy, clean, corrupt, metric)
    assert res.axes == ("layer", "pos") and res.values.shape == (3, 6)
    assert res.labels["pos"][0] == "0:0.000s"
    # the last layer's output at the metric's position is all the metric reads: patching it restores it exactly
    post = patch_residual(toy, clean, corrupt, metric, hook="resid_post", layers=[2])
    assert post.values[0, 3].item() == pytest.approx(1.0, abs=1e-4)
    heads = patch_heads(toy, clean, corrupt, metric, chunk_size=5)
    assert heads.values.shape == (3, 4)
    est = attribute_residual(toy, clean, corrupt, metric, sum_positions=True)
    assert torch.isfinite(est.values).all()
    with pytest.raises(ValueError, match="same number of steps"):
        patch_residual(toy, clean, recordings(2, (6, 5)), metric)


def test_lens_direct_heads_views(toy):
    lens = logit_lens(toy, recordings(3))
    assert lens.logits.shape == (4, 2, 6, 7) and lens.meta["final_max_abs_diff"] < 1e-5
    dec = decompose(toy, recordings(3))
    assert dec.max_error() < 1e-5
    dla = direct_logit_attribution(toy, recordings(3), 2, position=1, wrong_token=4)
    assert dla.meta["linearised"] is False
    assert dla.values.sum().item() + dla.meta["unembed_bias"] == pytest.approx(dla.meta["actual"], abs=1e-4)
    scores = head_scores(toy, recordings(3))
    assert "local_window" in scores and "sep" not in scores  # positions are steps, not tokens
    assert all(((v.values >= 0) & (v.values <= 1)).all() for k, v in scores.items() if k != "mean_distance")
    doc = attention_html(toy, recordings(3))
    assert '"axis":"time"' in doc and f'"frame_seconds":{STEP}' in doc


def test_analysis_has_no_family_switches_or_probes():
    """The analysis modules use the contract only (the CLI commands are converted separately; until then
    families.py keeps their family-name constants)."""
    root = Path(analysis_pkg.__file__).parent
    banned = [r'"encoder_decoder"', r'"audio_encoder"', r"getattr\(model\s*,", r"hasattr\(model\s*,", r"model: Any\b"]
    allowed = {("families.py", r'"encoder_decoder"'), ("families.py", r'"audio_encoder"')}
    for path in sorted(root.glob("*.py")):
        if path.name == "cli_commands.py":
            continue
        text = path.read_text()
        for pattern in banned:
            if (path.name, pattern) not in allowed:
                assert not re.search(pattern, text), f"{path.name} contains {pattern}"
