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
    with pytest.raises(IndexError, match="leading"):
        f[0, 1]
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
