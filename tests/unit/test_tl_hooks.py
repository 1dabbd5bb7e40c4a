"""TransformerLens 3.5 hook surface: LensHandle records, filters, context levels, prepend, globs in names_filter."""

from __future__ import annotations

import pytest
import torch

from encoderlens.hooks import HookPoint, LensHandle
from tests.conftest import raises_input_error


def _ident(x, hook):
    return None


def test_add_hook_records_permanent_level_and_prepend_order():
    hp = HookPoint()
    order = []
    hp.add_hook(lambda x, hook: order.append("a"), level=3)
    hp.add_hook(lambda x, hook: order.append("b"), prepend=True, is_permanent=True)
    assert all(isinstance(h, LensHandle) for h in hp.fwd_hooks)
    assert [h.context_level for h in hp.fwd_hooks] == [None, 3]
    assert [h.is_permanent for h in hp.fwd_hooks] == [True, False]
    hp(torch.ones(2))
    assert order == ["b", "a"]  # the prepended hook runs first


def test_has_hooks_filters():
    hp = HookPoint()
    assert not hp.has_hooks()
    hp.add_hook(_ident, dir="bwd", is_permanent=True)
    assert hp.has_hooks() and hp.has_hooks(dir="bwd") and not hp.has_hooks(dir="fwd")
    assert not hp.has_hooks(including_permanent=False)
    hp.add_hook(_ident, dir="fwd", level=2)
    assert hp.has_hooks(dir="fwd", level=2) and not hp.has_hooks(dir="fwd", level=1)
    with raises_input_error(ValueError, "dir must be", param="dir"):
        hp.has_hooks(dir="sideways")  # type: ignore[arg-type]


def test_remove_hooks_by_level_keeps_permanent():
    hp = HookPoint()
    hp.add_hook(_ident, level=1)
    hp.add_hook(_ident, level=2)
    hp.add_hook(_ident, is_permanent=True)
    hp.remove_hooks("fwd", level=2)
    assert [h.context_level for h in hp.fwd_hooks] == [1, None]
    hp.remove_hooks("both")
    assert len(hp.fwd_hooks) == 1 and hp.fwd_hooks[0].is_permanent
    hp.remove_hooks("both", including_permanent=True)
    assert not hp.has_hooks() and not hp._forward_hooks


def test_enable_reshape_accepts_only_no_conversion():
    hp = HookPoint()
    hp.enable_reshape(None)  # TransformerLens 3: no conversion, what every hook point here does
    assert hp.hook_conversion is None
    hp.add_hook(lambda x, hook: x + 1)
    assert hp(torch.zeros(2)).tolist() == [1.0, 1.0]

    class Doubling:
        def convert(self, x):
            return x * 2

        def revert(self, x):
            return x / 2

    with pytest.raises(NotImplementedError, match="TransformerBridge"):
        hp.enable_reshape(Doubling())
    assert hp.hook_conversion is None


def test_context_levels_nest_and_remove_only_their_own_hooks(tiny_mlm):
    model, _, _ = tiny_mlm
    name = "blocks.0.hook_resid_pre"
    assert model.context_level == 0
    with model.hooks(fwd_hooks=[(name, _ident)]):
        assert model.context_level == 1
        with model.hooks(fwd_hooks=[(name, _ident)]):
            assert [h.context_level for h in model.hook_dict[name].fwd_hooks] == [1, 2]
        assert [h.context_level for h in model.hook_dict[name].fwd_hooks] == [1]
    assert model.context_level == 0 and not model.hook_dict[name].has_hooks()
    model.add_perma_hook(name, _ident)
    model.remove_all_hook_fns()
    assert model.hook_dict[name].has_hooks()
    model.remove_all_hook_fns(including_permanent=True)
    assert not model.hook_dict[name].has_hooks()
    assert len(list(model.hook_points())) == len(model.hook_dict)


def test_glob_names_filter_caches_every_match(tiny_mlm):
    model, _, _ = tiny_mlm
    with torch.no_grad():
        _, cache = model.run_with_cache("the cat sat", names_filter="blocks.*.attn.hook_pattern")
        _, both = model.run_with_cache("the cat sat", names_filter=["blocks.*.attn.hook_pattern", "embed.hook_embed"])
    expected = [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    assert sorted(cache.keys()) == expected
    assert sorted(both.keys()) == sorted([*expected, "embed.hook_embed"])
    with pytest.raises(ValueError, match="unknown hook name"):
        model.run_with_cache("the cat sat", names_filter="blocks.*.attn.hook_patern")
