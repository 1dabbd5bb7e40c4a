"""FactoredMatrix: a low-rank product ``A @ B`` kept in factored form.

Used for ``QK = W_Q @ W_K^T`` and ``OV = W_V @ W_O`` circuits, which are ``d_model x d_model`` but of
rank ``d_head``. Leading dimensions (layer, head) broadcast like torch batch matmul.

Example:
    >>> A, B = torch.randn(5, 3), torch.randn(3, 7)
    >>> fm = FactoredMatrix(A, B)
    >>> torch.allclose(fm.AB, A @ B)
    True
"""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any, Protocol, cast, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["FactoredMatrix", "FactoredMatrixBroadcastError", "FactoredMatrixShapeError", "TensorLike"]

_HALF = (torch.float16, torch.bfloat16)


class FactoredMatrixShapeError(ValueError, AssertionError):
    """Shapes that cannot combine (inner dimensions, a non-square ``BA``, a non-scalar scale).

    A ``ValueError``, and also an ``AssertionError`` as TransformerLens raises for the same cases.
    """


class FactoredMatrixBroadcastError(FactoredMatrixShapeError, RuntimeError):
    """Leading (batch) dimensions that do not broadcast; also a ``RuntimeError``, as TransformerLens raises."""


@runtime_checkable
class TensorLike(Protocol):
    """An object that quacks like a tensor for products (``ndim``, ``shape``, ``size``, ``@``), e.g. a wrapper.

    A FactoredMatrix of such factors supports products (``@``, ``AB``, ``BA``); its results are of the
    factors' own type.
    """

    @property
    def ndim(self) -> int: ...

    @property
    def shape(self) -> Any: ...

    def size(self, dim: int) -> Any: ...

    def __matmul__(self, other: Any) -> Any: ...


def _is_matrix_like(x: Any) -> bool:
    """A torch tensor or a :class:`TensorLike`."""
    return isinstance(x, (Tensor, TensorLike))


class FactoredMatrix:
    """The matrix ``A @ B`` with ``A: (..., ldim, mdim)`` and ``B: (..., mdim, rdim)``, as in TransformerLens 3.5.

    ``A`` and ``B`` may be tensor-like objects (``ndim``, ``shape``, ``size``, ``unsqueeze``, ``@``); then only
    products (``@``, ``AB``, ``BA``) work. Leading dimensions broadcast like torch batch matmul.

    Attributes:
        A, B: The factors (broadcast to the common leading shape).
        ldim, mdim, rdim: Rows, inner dimension, columns.
        has_leading_dims: Whether ``A`` or ``B`` was given with leading (batch) dimensions.
        shape: ``(*leading, ldim, rdim)``.
    """

    def __init__(
        self, A: Float[Tensor, "... ldim mdim"] | TensorLike, B: Float[Tensor, "... mdim rdim"] | TensorLike
    ) -> None:
        if not _is_matrix_like(A) or not _is_matrix_like(B):
            raise TypeError(f"FactoredMatrix needs two tensors, got {type(A).__name__} and {type(B).__name__}")
        if A.ndim < 2 or B.ndim < 2:
            raise FactoredMatrixShapeError(
                f"A and B need at least 2 dims, got shapes {tuple(A.shape)} and {tuple(B.shape)}"
            )
        if A.size(-1) != B.size(-2):
            raise FactoredMatrixShapeError(
                f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)}; "
                "expected A.shape[-1] == B.shape[-2]"
            )
        self.ldim: int = int(A.size(-2))
        self.mdim: int = int(B.size(-2))
        self.rdim: int = int(B.size(-1))
        self.has_leading_dims: bool = A.ndim > 2 or B.ndim > 2
        try:
            lead = torch.broadcast_shapes(tuple(A.shape[:-2]), tuple(B.shape[:-2]))
        except RuntimeError as e:
            raise FactoredMatrixBroadcastError(
                f"leading dimensions mismatch (they do not broadcast): A is {tuple(A.shape)}, B is {tuple(B.shape)}"
            ) from e
        self.shape = torch.Size((*lead, self.ldim, self.rdim))
        # typed as tensors: a TensorLike stands in for one in products, the only operations it supports here
        A, B = cast(Tensor, A), cast(Tensor, B)
        self.A: Tensor = A.broadcast_to((*lead, self.ldim, self.mdim)) if tuple(A.shape[:-2]) != tuple(lead) else A
        self.B: Tensor = B.broadcast_to((*lead, self.mdim, self.rdim)) if tuple(B.shape[:-2]) != tuple(lead) else B

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> tuple[Tensor | TensorLike, Tensor | TensorLike]:
        """``(A, B)``."""
        return self.A, self.B

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, mdim={self.mdim})"

    # ------------------------------------------------------------------ products
    @property
    def AB(self) -> Float[Tensor, "... ldim rdim"] | TensorLike:
        """The full product ``A @ B``."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "... rdim ldim"] | TensorLike:
        """``B @ A`` (needs ``ldim == rdim``); has the same nonzero eigenvalues as ``AB``."""
        if self.ldim != self.rdim:
            raise FactoredMatrixShapeError(f"BA needs a square product, got ldim={self.ldim}, rdim={self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def __matmul__(self, other: Any) -> Any:
        """``self @ other``: a FactoredMatrix for a matrix or a FactoredMatrix, a tensor for a vector.

        As TransformerLens, the product keeps the smaller inner dimension: ``(A @ B) @ M`` is
        ``FactoredMatrix(A, B @ M)`` when ``rdim > mdim``, else ``FactoredMatrix(AB, M)``.
        """
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if not _is_matrix_like(other):
            return NotImplemented
        if other.ndim < 2:
            if other.size(-1) != self.rdim:
                raise FactoredMatrixShapeError(
                    f"cannot multiply {tuple(self.shape)} by a vector of {other.size(-1)}: inner dims differ"
                )
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.size(-2) != self.rdim:
            raise FactoredMatrixShapeError(
                f"cannot multiply {tuple(self.shape)} by {tuple(other.shape)}: inner dims differ "
                f"({self.rdim} vs {other.size(-2)})"
            )
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Any) -> Any:
        """``other @ self`` for a matrix (a FactoredMatrix) or a vector (a tensor)."""
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        if not _is_matrix_like(other):
            return NotImplemented
        if other.size(-1) != self.ldim:
            raise FactoredMatrixShapeError(
                f"cannot multiply {tuple(other.shape)} by {tuple(self.shape)}: inner dims differ "
                f"({other.size(-1)} vs {self.ldim})"
            )
        if other.ndim < 2:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: float | int | Tensor) -> FactoredMatrix:
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise FactoredMatrixShapeError(
                f"a FactoredMatrix can only be scaled by a scalar, got a tensor of shape {tuple(scalar.shape)}; "
                "use @ for matrix products"
            )
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    # ------------------------------------------------------------------ decompositions
    def _factors_for_linalg(self) -> tuple[Tensor, Tensor]:
        """``A`` and ``B`` in a dtype ``torch.linalg`` handles: half precision is upcast to float32.

        ``torch.linalg.svd`` / ``eig`` have no float16 / bfloat16 kernels (CPU or CUDA), and their
        results in 8 or 11 mantissa bits would be too coarse to read anyway.
        """
        if self.A.dtype in _HALF or self.B.dtype in _HALF:
            return self.A.float(), self.B.float()
        return self.A, self.B

    @cached_property
    def _svd(self) -> tuple[Tensor, Tensor, Tensor]:
        # SVD of A and B separately, then of the small mdim x mdim core: cheap for low rank
        A, B = self._factors_for_linalg()
        Ua, Sa, Vha = torch.linalg.svd(A, full_matrices=False)
        Ub, Sb, Vhb = torch.linalg.svd(B, full_matrices=False)
        core = (Sa[..., :, None] * Vha) @ (Ub * Sb[..., None, :])
        Uc, Sc, Vhc = torch.linalg.svd(core, full_matrices=False)
        U = Ua @ Uc
        Vh = Vhc @ Vhb
        return U, Sc, Vh.transpose(-2, -1)

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """``U, S, V`` with ``AB = U @ diag(S) @ V^T``; ``S`` sorted descending, ``min(ldim, mdim, rdim)`` values.

        Half-precision factors (float16, bfloat16) are decomposed in float32, and ``U, S, V`` are
        float32 (as are ``eigenvalues``' complex64 and ``norm()``).
        """
        return self._svd

    @property
    def U(self) -> Tensor:
        return self._svd[0]

    @property
    def S(self) -> Tensor:
        return self._svd[1]

    @property
    def V(self) -> Tensor:
        """Right singular vectors: ``AB == U @ diag(S) @ V^T``."""
        return self._svd[2]

    @property
    def Vh(self) -> Tensor:
        """Deprecated (TransformerLens 3.5): an alias of :attr:`V`, not its transpose; warns."""
        warnings.warn(
            "FactoredMatrix.Vh returns V (the right singular vectors), not V^T, as in TransformerLens 3.5; "
            "use .V, or .V.transpose(-2, -1) for V^T",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._svd[2]

    @property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues of ``AB`` (complex), computed as the ``mdim`` eigenvalues of ``BA``'s small form ``B @ A``."""
        if self.ldim != self.rdim:
            raise FactoredMatrixShapeError(f"eigenvalues need a square matrix, got {tuple(self.shape)}")
        A, B = self._factors_for_linalg()
        return torch.linalg.eig(B @ A).eigenvalues

    def norm(self) -> Tensor:
        """Frobenius norm (over the last two dims)."""
        return self.S.pow(2).sum(-1).sqrt()

    def make_even(self) -> FactoredMatrix:
        """The same matrix as ``(U sqrt(S), sqrt(S) V^T)``: each factor carries half the singular values."""
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * self.V.transpose(-2, -1))

    def get_corner(self, k: int = 3) -> Tensor:
        """Top-left ``k x k`` corner of ``AB`` (of every leading item), without forming the whole product."""
        return self.A[..., :k, :] @ self.B[..., :, :k]

    def collapse_l(self) -> Tensor:
        """``S[:, None] * V^T``: the matrix with ``A`` collapsed to an orthonormal basis, ``(..., mdim, rdim)``."""
        return self.S[..., :, None] * self.V.transpose(-2, -1)

    def collapse_r(self) -> Tensor:
        """``U * S``: the matrix with ``B`` collapsed, ``(..., ldim, mdim)``."""
        return self.U * self.S[..., None, :]

    def unsqueeze(self, dim: int) -> FactoredMatrix:
        if dim < 0:
            dim = self.ndim + dim + 1
        if dim > self.ndim - 2:
            raise ValueError("can only unsqueeze leading (batch) dimensions of a FactoredMatrix")
        return FactoredMatrix(self.A.unsqueeze(dim), self.B.unsqueeze(dim))

    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index as TransformerLens: leading dims, then rows (of ``A``), then columns (of ``B``).

        An integer row or column index keeps that dimension with size 1 (``fm[..., 2, :]`` style results
        stay matrices), e.g. ``model.OV[layer, head]`` or ``fm[0, 1:3]``.
        """
        if not isinstance(idx, tuple):
            idx = (idx,)
        n = len([i for i in idx if i is not None])
        if any(i is Ellipsis for i in idx):
            if n - 1 > self.ndim - 2:
                raise IndexError(
                    f"an index with ... selects leading dims only; {idx} is too long for shape {tuple(self.shape)}"
                )
            return FactoredMatrix(self.A[idx], self.B[idx])
        if n <= self.ndim - 2:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if n == self.ndim - 1:
            idx = _keep_dim(idx, -1)
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        if n == self.ndim:
            idx = _keep_dim(_keep_dim(idx, -1), -2)
            return FactoredMatrix(self.A[idx[:-1]], self.B[(*idx[:-2], slice(None), idx[-1])])
        raise IndexError(f"{idx} is too long an index for a FactoredMatrix of shape {tuple(self.shape)}")

    def to(self, *args: Any, **kwargs: Any) -> FactoredMatrix:
        return FactoredMatrix(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))


def _keep_dim(idx: tuple[Any, ...], pos: int) -> tuple[Any, ...]:
    """Replace an integer at ``idx[pos]`` by a one-element slice (the dimension is kept)."""
    value = idx[pos]
    if not isinstance(value, int):
        return idx
    out = list(idx)
    out[pos] = slice(value, value + 1 if value != -1 else None)
    return tuple(out)
