"""Data2VecText (``Data2VecTextModel``, ``Data2VecTextForMaskedLM``, ``Data2VecTextFor{Sequence,Token}Classification``,
``Data2VecTextForQuestionAnswering``)
-> :class:`HookedEncoder`.

data2vec's text encoder is a RoBERTa (trained with another objective): the same modules under a
``data2vec_text.`` prefix, fairseq positions from ``pad_token_id + 1``, RoBERTa's MLM head (exact GELU),
classifiers and QA head.
"""

from __future__ import annotations

from encoderlens.convert.bertlike import register_bertlike
from encoderlens.convert.roberta import roberta_like

SPEC = roberta_like("Data2VecText", "data2vec_text.", ("data2vec-text",))

convert = register_bertlike(SPEC)
