"""FactoredMatrix algebra against dense computations, and the model's weight properties."""

from __future__ import annotations

import pytest
import torch

from encoderlens import FactoredMatrix


def fm(*lead: int, l: int = 7, m: int = 3, r: int = 5) -> tuple[FactoredMatrix, torch.Tensor]:  # noqa: E741
    A = torch.randn(*lead, l, m, dtype=torch.float64)
    B = torch.randn(*lead, m, r, dtype=torch.float64)
    return FactoredMatrix(A, B), A @ B


def test_products_and_shapes():
    f, dense = fm(2, 4)
    assert f.shape == (2, 4, 7, 5) and f.mdim == 3 and torch.allclose(f.AB, dense)
    M = torch.randn(5, 11, dtype=torch.float64)
    assert torch.allclose((f @ M).AB, dense @ M)
    N = torch.randn(6, 7, dtype=torch.float64)
    assert torch.allclose((N @ f).AB, N @ dense)
    v = torch.randn(5, dtype=torch.float64)
    assert torch.allclose(f @ v, dense @ v)
    g, gd = fm(2, 4, l=5, m=2, r=3)
    prod = f @ g
    assert isinstance(prod, FactoredMatrix) and prod.mdim == 2 and torch.allclose(prod.AB, dense @ gd)
    assert torch.allclose(f.T.AB, dense.transpose(-2, -1))
    assert torch.allclose((f * 2.0).AB, 2 * dense)
    with pytest.raises(ValueError, match="inner"):
        f @ torch.randn(4, 4, dtype=torch.float64)


def test_svd_norm_eigenvalues_corner_indexing():
    f, dense = fm(3, l=6, m=2, r=6)
    U, S, V = f.svd()
    assert torch.allclose(U @ torch.diag_embed(S) @ V.transpose(-2, -1), dense, atol=1e-10)
    assert torch.allclose(S, torch.linalg.svdvals(dense)[..., :2], atol=1e-10)
    assert torch.allclose(f.norm(), torch.linalg.matrix_norm(dense), atol=1e-10)
    eig = f.eigenvalues
    dense_eig = torch.linalg.eigvals(dense)
    for b in range(3):  # the 2 nonzero eigenvalues of the rank-2 product
        top = dense_eig[b][dense_eig[b].abs().argsort(descending=True)[:2]]
        assert torch.allclose(torch.sort(eig[b].real).values, torch.sort(top.real).values, atol=1e-8)
    assert torch.allclose(f.get_corner(2), dense[..., :2, :2])
    assert torch.allclose(f[1].AB, dense[1])
    # TransformerLens indexing: leading dims, then rows, then columns (an integer keeps its dim)
    assert torch.allclose(f[0, 1].AB, dense[0, 1:2]) and f[0, 1].shape == (1, 6)
    assert torch.allclose(f[2, -1, 1:4].AB, dense[2, -1:, 1:4])
    with pytest.raises(IndexError, match="too long"):
        f[0, 1, 2, 3]
    with pytest.raises(ValueError, match="square"):
        fm(l=3, r=4)[0].eigenvalues
    with pytest.raises(ValueError, match="inner dimensions"):
        FactoredMatrix(torch.randn(3, 4), torch.randn(5, 6))


def test_model_weight_properties(tiny_mlm):
    model, hf, _ = tiny_mlm
    n_layers, n_heads, d_model, d_head = 3, 3, 36, 12
    assert model.W_Q.shape == (n_layers, n_heads, d_model, d_head)
    assert model.W_O.shape == (n_layers, n_heads, d_head, d_model)
    assert model.b_Q.shape == (n_layers, n_heads, d_head) and model.b_O.shape == (n_layers, d_model)
    assert model.W_in.shape == (n_layers, d_model, 37) and model.W_out.shape == (n_layers, 37, d_model)
    assert model.W_E.shape == (99, d_model) and model.W_pos.shape == (40, d_model)
    assert model.W_U.shape == (d_model, 99) and torch.equal(model.W_U, model.W_E.T)
    # QK for layer 1 head 2 equals the dense product of HF's query/key slices
    q = hf.bert.encoder.layer[1].attention.self.query.weight[2 * d_head : 3 * d_head]
    k = hf.bert.encoder.layer[1].attention.self.key.weight[2 * d_head : 3 * d_head]
    assert torch.allclose(model.QK[1, 2].AB, q.T @ k, atol=1e-6)
    assert model.OV.shape == (n_layers, n_heads, d_model, d_model)
    labels = model.all_head_labels()
    assert len(labels) == 9 and labels[5] == "L1H2"


def test_vector_products_with_leading_dims():
    f, dense = fm(2, 4)
    v = torch.randn(5, dtype=torch.float64)
    assert torch.allclose(f @ v, dense @ v)
    w = torch.randn(7, dtype=torch.float64)
    assert torch.allclose(w @ f, w @ dense)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_decompositions_upcast_to_float32(dtype):
    # torch.linalg has no half-precision svd/eig (model.OV[0, 0].svd() raised on a bf16 model)
    A = torch.randn(3, 6, 2, dtype=torch.float64).to(dtype)
    B = torch.randn(3, 2, 6, dtype=torch.float64).to(dtype)
    f, exact = FactoredMatrix(A, B), FactoredMatrix(A.double(), B.double())
    U, S, V = f.svd()
    assert U.dtype == S.dtype == V.dtype == torch.float32
    # the factors are exactly representable in float32: the float32 result is the fp64 one to float32 precision
    assert torch.allclose(S.double(), exact.S, atol=1e-5)
    assert torch.allclose((U @ torch.diag_embed(S) @ V.transpose(-2, -1)).double(), exact.AB, atol=1e-4)
    assert f.norm().dtype == torch.float32 and torch.allclose(f.norm().double(), exact.norm(), atol=1e-5)
    eig = f.eigenvalues
    assert eig.dtype == torch.complex64
    assert torch.allclose(eig.abs().sort().values.double(), exact.eigenvalues.abs().sort().values, atol=1e-4)
    assert f.AB.dtype == dtype  # products stay in the factors' dtype


def test_tl_surface_pair_v_vh_has_leading_dims():
    from encoderlens.factored_matrix import FactoredMatrixShapeError

    f, dense = fm(l=6, m=2, r=5)
    assert f.pair[0] is f.A and f.pair[1] is f.B and not f.has_leading_dims
    assert fm(2)[0].has_leading_dims
    U, S, V = f.svd()
    assert f.V is V and torch.allclose(U @ torch.diag_embed(S) @ f.V.T, dense, atol=1e-10)
    with pytest.warns(DeprecationWarning, match="returns V"):
        assert f.Vh is V  # TransformerLens 3.5: Vh is a deprecated alias of V
    assert torch.allclose(f.make_even().AB, dense, atol=1e-10)
    assert torch.allclose(f.collapse_l(), S[:, None] * V.T)
    # shape errors are ValueErrors and AssertionErrors (TransformerLens raises AssertionError)
    for bad in (lambda: f @ fm(l=4)[0], lambda: f.BA, lambda: f * torch.ones(2), lambda: torch.ones(3, 4) @ f):
        with pytest.raises(FactoredMatrixShapeError) as err:
            bad()
        assert isinstance(err.value, ValueError) and isinstance(err.value, AssertionError)
    with pytest.raises(RuntimeError, match="mismatch"):
        FactoredMatrix(torch.ones(9, 5, 3), torch.ones(2, 4, 3, 7))


def test_product_mdim_is_the_smallest_inner_dim():
    """As TransformerLens: a product keeps the narrowest inner dimension (it was the old mdim)."""
    a, ad = fm(l=4, m=6, r=3)  # rdim 3 < mdim 6
    b, bd = fm(l=3, m=6, r=4)
    prod = a @ b
    assert prod.mdim == 3 and torch.allclose(prod.AB, ad @ bd)
    M = torch.randn(3, 2, dtype=torch.float64)
    assert (a @ M).mdim == 3 and torch.allclose((a @ M).AB, ad @ M)
    N = torch.randn(5, 4, dtype=torch.float64)
    assert (N @ a).mdim == 4 and torch.allclose((N @ a).AB, N @ ad)


def test_tensor_like_operands():
    class Wrapped:
        def __init__(self, t):
            self.t = t

        ndim = property(lambda self: self.t.ndim)
        shape = property(lambda self: self.t.shape)

        def size(self, dim=None):
            return self.t.size() if dim is None else self.t.size(dim)

        def unsqueeze(self, d):
            return Wrapped(self.t.unsqueeze(d))

        def squeeze(self, d):
            return Wrapped(self.t.squeeze(d))

        def __matmul__(self, other):
            if isinstance(other, FactoredMatrix):
                return NotImplemented
            return Wrapped(self.t @ (other.t if isinstance(other, Wrapped) else other))

        def __rmatmul__(self, other):
            return Wrapped(other @ self.t)

    f, dense = fm(l=3, m=4, r=6)
    right = f @ Wrapped(torch.randn(6, 5, dtype=torch.float64))
    assert isinstance(right, FactoredMatrix) and isinstance(right.AB, Wrapped)
    m = torch.randn(2, 3, dtype=torch.float64)
    left = Wrapped(m) @ f
    assert isinstance(left, FactoredMatrix) and torch.allclose(left.AB.t, m @ dense)


def test_utils_transpose_as_transformerlens_uses_it():
    """TransformerLens code writes ``fm.collapse_r() @ utils.transpose(fm.V) == fm.AB`` (any leading dims)."""
    from encoderlens import utils

    fm = FactoredMatrix(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 4, 6))
    assert utils.transpose(fm.V).shape == (2, 3, 4, 6)
    assert torch.allclose(fm.collapse_r() @ utils.transpose(fm.V), fm.AB, atol=1e-4)
    assert torch.equal(utils.transpose(torch.arange(6).view(2, 3)), torch.tensor([[0, 3], [1, 4], [2, 5]]))
    assert utils.get_act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
