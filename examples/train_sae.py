"""Train a tiny SAE on harvested activations of the embedded model, save it in SAELens's format, splice it back.

Run: ``python examples/train_sae.py [OUT_DIR]`` (offline, about a minute on a laptop CPU). Walk-through in
docs/sae.md. The loop is plain PyTorch: harvested rows are a ``(rows, d_model)`` tensor
(``load_harvest(dir).load(hook)``), which is also what any other trainer (SAELens's included) reads as
pre-computed activations.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import encoderlens
from encoderlens import SAEConfig, SparseAutoencoder, load_sae, save_sae
from encoderlens.harvest import harvest, load_harvest

HOOK = "blocks.3.hook_resid_post"
SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "a child", "the old man", "her sister", "the pilot"]
VERBS = ["likes", "sees", "paints", "finds", "reads about", "talks to", "waits for", "remembers"]
OBJECTS = ["the sea", "a red car", "the mountains", "an old book", "the city", "a small bird", "the music", "rain"]


def sentences(n: int = 64) -> list[str]:
    """``n`` simple sentences (subject, verb, object), deterministic."""
    g = torch.Generator().manual_seed(0)
    pick = [torch.randint(0, 8, (3,), generator=g).tolist() for _ in range(n)]
    return [f"{SUBJECTS[a]} {VERBS[b]} {OBJECTS[c]}." for a, b, c in pick]


def train(
    acts: torch.Tensor, d_sae: int = 768, k: int = 16, steps: int = 400, lr: float = 2e-3, batch: int = 256
) -> SparseAutoencoder:
    """A top-k SAE fitted to ``acts`` (rows x d_in) by Adam on the reconstruction error."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig("topk", acts.shape[1], d_sae, hook_name=HOOK, k=k))
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
        sae.W_dec.mul_(0.1)
        sae.W_enc.copy_(sae.W_dec.T)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(steps):
        x = acts[torch.randint(0, len(acts), (batch,))]
        loss = (sae(x) - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # unit-norm decoder rows, as usual for SAEs
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    return sae


def variance_explained(sae: SparseAutoencoder, acts: torch.Tensor) -> float:
    with torch.no_grad():
        err = (sae(acts) - acts).pow(2).sum()
    return float(1 - err / (acts - acts.mean(0)).pow(2).sum())


def main(out: str | Path, n_sentences: int = 64, **train_options: int) -> dict[str, float]:
    """Harvest, train, save, load, splice; returns the numbers worth looking at."""
    out = Path(out)
    model = encoderlens.from_pretrained("default")  # the embedded all-MiniLM-L6-v2
    texts = sentences(n_sentences)
    # 1. harvest the residual stream after block 3; [CLS], [SEP] and padding are left out
    harvest(model, texts, HOOK, out / "acts", batch_size=16, dtype="fp32", exclude_special_tokens=True, progress=False)
    acts = load_harvest(out / "acts").load(HOOK).float()
    # 2. train, 3. save in SAELens's format and load it back
    sae = train(acts, **train_options)
    fve = variance_explained(sae, acts)
    save_sae(sae, out / "sae")
    sae = load_sae(out / "sae")
    # 4. splice it into the model: sentence embeddings with the SAE's reconstruction in place of block 3's output
    batch = model.prepare_input(texts[:8])
    with torch.no_grad():
        plain = model.run_prepared(batch, return_type="sentence_embedding")
        with model.saes([sae]):
            spliced, cache = model.run_prepared_with_cache(batch, return_type="sentence_embedding")
    cos = float(torch.nn.functional.cosine_similarity(plain, spliced).mean())
    feats = cache[f"{HOOK}.hook_sae_acts_post"]
    l0 = float((feats[batch.mask(None).bool()] > 0).sum(-1).float().mean())
    return {"rows": float(len(acts)), "variance_explained": fve, "spliced_cosine": cos, "l0": l0}


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="encoderlens-sae-")
    for key, value in main(target).items():
        print(f"{key}: {value:.3f}")
