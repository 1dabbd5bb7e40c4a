"""The vocabulary projection writes logits into 64-byte-aligned rows, with F.linear's values, and keeps autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoderlens.components.vocab_projection import ROW_ALIGN_BYTES, vocab_projection
from tests.conftest import runtime_typechecked

SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _row_bytes(t: torch.Tensor) -> int:
    return t.stride(-2) * t.element_size()


@SETTINGS
@given(
    lead=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    d_in=st.integers(1, 24),
    d_out=st.integers(1, 70),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    bias=st.booleans(),
    tied=st.booleans(),
)
def test_values_equal_linear_and_rows_aligned(lead, d_in, d_out, dtype, bias, tied):
    g = torch.Generator().manual_seed(d_in * 100 + d_out)
    x = torch.randn(*lead, d_in, generator=g).to(dtype)
    # a tied unembedding is W_E.T: a transposed view, read in place
    W = torch.randn(d_out, d_in, generator=g).to(dtype).T if tied else torch.randn(d_in, d_out, generator=g).to(dtype)
    b = torch.randn(d_out, generator=g).to(dtype) if bias else None
    with torch.no_grad():
        got = vocab_projection(x, W, b)
    want = F.linear(x.double(), W.double().t(), None if b is None else b.double())
    assert got.shape == want.shape and got.dtype == dtype
    if not want.numel():
        return
    scale = max(1.0, want.abs().max().item())
    assert (got.double() - want).abs().max().item() <= TOL[dtype] * scale
    if got.dim() >= 2 and got.shape[-2] > 1:
        assert _row_bytes(got) % ROW_ALIGN_BYTES == 0, (got.shape, got.stride())


def test_unaligned_vocab_is_padded_aligned_vocab_is_contiguous():
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        odd = vocab_projection(x, torch.randn(8, 99), torch.randn(99))
        even = vocab_projection(x, torch.randn(8, 128), torch.randn(128))
    assert odd.stride() == (5 * 112, 112, 1) and not odd.is_contiguous()
    assert even.is_contiguous()


def test_gradient_paths_record_a_graph_and_match_linear():
    x = torch.randn(3, 4, 8, requires_grad=True)
    W = torch.randn(8, 99, requires_grad=True)
    b = torch.randn(99, requires_grad=True)
    got = vocab_projection(x, W, b)
    assert got.grad_fn is not None
    got.square().sum().backward()
    grads = [t.grad.clone() for t in (x, W, b)]
    for t in (x, W, b):
        t.grad = None
    F.linear(x, W.t(), b).square().sum().backward()
    for mine, ref in zip(grads, (x.grad, W.grad, b.grad), strict=True):
        torch.testing.assert_close(mine, ref)


def test_autocast_and_torch_func_take_the_plain_path():
    x = torch.randn(4, 8)
    W = torch.randn(8, 99)
    b = torch.randn(99)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast = vocab_projection(x, W, b)
    assert cast.dtype == torch.bfloat16  # autocast applied, as it is to F.linear
    jac = torch.func.jacrev(lambda v: vocab_projection(v, W, b))(x[0])
    torch.testing.assert_close(jac, W.t())
    batched = torch.func.vmap(lambda v: vocab_projection(v, W, b))(x)
    torch.testing.assert_close(batched, F.linear(x, W.t(), b))


def test_mismatched_dtypes_raise_as_linear_does():
    with torch.no_grad(), pytest.raises(RuntimeError):
        vocab_projection(torch.randn(2, 8), torch.randn(8, 99, dtype=torch.float64), None)


def test_model_logits_rows_are_aligned_and_equal_the_graph_path(tiny_mlm):
    """BERT's vocabulary of 99: every head's logits come out aligned under no_grad, equal to the autograd run."""
    model, _, _ = tiny_mlm
    tokens = torch.randint(5, 99, (2, 7))
    with torch.no_grad():
        fast = model(tokens, return_type="logits")
    slow = model(tokens, return_type="logits")  # parameters require grad: the plain F.linear path
    assert slow.grad_fn is not None and slow.is_contiguous()
    assert _row_bytes(fast) % ROW_ALIGN_BYTES == 0 and not fast.is_contiguous()
    torch.testing.assert_close(fast, slow.detach(), atol=1e-6, rtol=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, return_type="logits")
        unembedded = model.unembed(cache["mlm_head.hook_transformed"])
    torch.testing.assert_close(unembedded, fast, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dual", ["x", "W", "b"])
def test_forward_mode_ad_takes_the_plain_path(dual):
    """A forward-mode dual operand (``torch.autograd.forward_ad``): addmm(out=) has no forward derivative and
    raised NotImplementedError, under no_grad too; F.linear's tangent comes out."""
    import torch.autograd.forward_ad as fwAD

    g = torch.Generator().manual_seed(0)
    ops = {
        "x": torch.randn(3, 4, 8, generator=g),
        "W": torch.randn(8, 99, generator=g),
        "b": torch.randn(99, generator=g),
    }
    tangent = torch.randn(ops[dual].shape, generator=g)

    def linear(t: torch.Tensor) -> torch.Tensor:
        o = {**ops, dual: t}
        return F.linear(o["x"], o["W"].t(), o["b"])

    want = torch.func.jvp(linear, (ops[dual],), (tangent,))
    with fwAD.dual_level(), torch.no_grad():
        got = vocab_projection(**{**ops, dual: fwAD.make_dual(ops[dual], tangent)})
        primal, got_tangent = fwAD.unpack_dual(got)
    torch.testing.assert_close(primal, want[0])
    torch.testing.assert_close(got_tangent, want[1])


def test_torch_compile_traces_it_in_one_graph():
    if runtime_typechecked():
        # beartype's checks of the annotations do not run under dynamo's tracing (it reports its own
        # "desynchronization" error): the plain run of the suite covers this
        pytest.skip("torch.compile cannot trace jaxtyping + beartype's wrappers")
    x, W, b = torch.randn(4, 8), torch.randn(8, 99), torch.randn(99)
    compiled = torch.compile(lambda v: vocab_projection(v, W, b), backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), F.linear(x, W.t(), b))


@pytest.mark.parametrize("batched", ["x", "W", "b"])
def test_vmap_over_any_operand_takes_the_plain_path(batched):
    """vmap over the bias alone (x and W plain) reached addmm(out=), which has no batching rule."""
    g = torch.Generator().manual_seed(1)
    ops = {"x": torch.randn(4, 8, generator=g), "W": torch.randn(8, 99, generator=g), "b": torch.randn(99, generator=g)}
    stacked = torch.stack([ops[batched], 2 * ops[batched], -ops[batched]])

    def run(fn, t: torch.Tensor) -> torch.Tensor:
        o = {**ops, batched: t}
        return fn(o["x"], o["W"], o["b"])

    with torch.no_grad():
        got = torch.func.vmap(lambda t: run(vocab_projection, t))(stacked)
    want = torch.stack([run(lambda x, W, b: F.linear(x, W.t(), b), t) for t in stacked])
    torch.testing.assert_close(got, want)
