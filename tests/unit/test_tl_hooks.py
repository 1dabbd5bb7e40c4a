"""TransformerLens 3.5 hook surface: LensHandle records, filters, context levels, prepend, globs in names_filter."""

from __future__ import annotations

import pytest
import torch

from encoderlens.hooks import BaseTensorConversion, HookPoint, LensHandle
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


class _Doubled(BaseTensorConversion):
    """Hooks see 2x; what they return comes back plus 10 (distinguishable from every other step)."""

    def handle_conversion(self, input_value, *full_context):
        return input_value * 2

    def revert(self, input_value, *full_context):
        return input_value + 10


def test_enable_reshape_converts_what_hooks_see_and_reverts_what_they_return():
    hp = HookPoint()
    seen = []
    hp.add_hook(lambda x, hook: seen.append(x.clone()) or x + 1)
    hp.enable_reshape(_Doubled())
    out = hp(torch.tensor([1.0, 2.0, 3.0]))
    assert seen[0].tolist() == [2.0, 4.0, 6.0]
    assert out.tolist() == [13.0, 15.0, 17.0]  # revert(convert(x) + 1)
    hp.enable_reshape(None)  # removed: the hook sees and edits the activation itself
    assert hp.hook_conversion is None
    assert hp(torch.tensor([1.0])).tolist() == [2.0]


def test_enable_reshape_leaves_the_activation_when_the_hook_returns_none():
    hp = HookPoint()
    seen = []
    hp.add_hook(lambda x, hook: seen.append(x.clone()))
    hp.enable_reshape(_Doubled())
    assert hp(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0] and seen[0].tolist() == [2.0, 4.0]


def test_enable_reshape_applies_to_backward_hooks_and_filters():
    grads = []
    conversion = _Doubled(input_filter=lambda x: x - 1, output_filter=lambda x: -x)
    assert conversion.convert(torch.tensor([3.0])).tolist() == [-4.0]  # -(2 * (3 - 1))
    hp = HookPoint()
    hp.add_hook(lambda g, hook: grads.append(g.clone()), dir="bwd")
    hp.enable_reshape(conversion)
    x = torch.ones(2, requires_grad=True)
    hp(x).sum().backward()
    assert grads[0].tolist() == [0.0, 0.0]  # -(2 * (1 - 1)): the hook saw the converted gradient
    assert x.grad.tolist() == [1.0, 1.0]  # returned None: the gradient itself is unchanged


def test_enable_reshape_refuses_what_is_not_a_conversion():
    hp = HookPoint()
    with raises_input_error(TypeError, "convert\\(\\) and revert\\(\\)", param="hook_conversion"):
        hp.enable_reshape(lambda x: x)
    with pytest.raises(NotImplementedError, match="handle_conversion"):
        BaseTensorConversion().convert(torch.ones(1))


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
