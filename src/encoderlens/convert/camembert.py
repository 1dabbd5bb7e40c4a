"""CamemBERT (``CamembertModel``, ``CamembertForMaskedLM``, ``CamembertFor{Sequence,Token}Classification``,
``CamembertForQuestionAnswering``)
-> :class:`HookedEncoder`.

HF's CamemBERT is RoBERTa with another vocabulary: same modules under the same ``roberta.`` prefix,
fairseq positions from ``pad_token_id + 1``, the same MLM head (exact GELU), classifiers and QA head.
"""

from __future__ import annotations

from encoderlens.convert.bertlike import register_bertlike
from encoderlens.convert.roberta import roberta_like

SPEC = roberta_like("Camembert", "roberta.", ("camembert",))

convert = register_bertlike(SPEC)
