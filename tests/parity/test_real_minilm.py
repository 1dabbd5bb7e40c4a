"""Real weights: the packaged all-MiniLM-L6-v2 loaded through our loader matches HF and sentence-transformers."""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer

from encoderlens import HookedEncoder
from encoderlens.io.checkpoint import default_model_path
from tests.conftest import masked_max_diff, pattern_max_diff

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Interpretability research studies the internals of neural networks.",
    "Hi!",
    ("How old are you?", "What is your age?"),
]


def test_minilm_matches_hf_every_layer():
    path = default_model_path()
    model = HookedEncoder.from_pretrained(path)
    hf = AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    single = [s for s in SENTENCES if isinstance(s, str)]
    enc = tok(single, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = hf(**enc, output_hidden_states=True, output_attentions=True)
        ours, cache = model.run_with_cache(single, return_type="embeddings")
    mask = enc["attention_mask"]
    assert masked_max_diff(ours, out.last_hidden_state, mask) < 1e-4
    for i in range(6):
        assert masked_max_diff(cache["normalized_resid_post", i], out.hidden_states[i + 1], mask) < 1e-4
        assert pattern_max_diff(cache["pattern", i], out.attentions[i], mask) < 1e-4
    pair = tok(*SENTENCES[-1], return_tensors="pt")
    with torch.no_grad():
        assert (model(SENTENCES[-1], return_type="embeddings") - hf(**pair).last_hidden_state).abs().max() < 1e-4
        assert (model(single, return_type="pooled") - out.pooler_output).abs().max() < 1e-4
