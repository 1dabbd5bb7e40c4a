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

from functools import cached_property
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


class FactoredMatrix:
    """The matrix ``A @ B`` with ``A: (..., ldim, mdim)`` and ``B: (..., mdim, rdim)``."""

    def __init__(self, A: Float[Tensor, "... ldim mdim"], B: Float[Tensor, "... mdim rdim"]) -> None:
        if not isinstance(A, Tensor) or not isinstance(B, Tensor):
            raise TypeError(f"FactoredMatrix needs two tensors, got {type(A).__name__} and {type(B).__name__}")
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(f"A and B need at least 2 dims, got shapes {tuple(A.shape)} and {tuple(B.shape)}")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)}; "
                "expected A.shape[-1] == B.shape[-2]"
            )
        lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.broadcast_to(*lead, *A.shape[-2:])
        self.B = B.broadcast_to(*lead, *B.shape[-2:])

    # ------------------------------------------------------------------ shape
    @property
    def ldim(self) -> int:
        return self.A.shape[-2]

    @property
    def rdim(self) -> int:
        return self.B.shape[-1]

    @property
    def mdim(self) -> int:
        return self.A.shape[-1]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.A.shape[:-2], self.ldim, self.rdim))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, mdim={self.mdim})"

    # ------------------------------------------------------------------ products
    @property
    def AB(self) -> Float[Tensor, "... ldim rdim"]:
        """The full product ``A @ B``."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "... rdim ldim"]:
        """``B @ A`` (needs ``ldim == rdim``); has the same nonzero eigenvalues as ``AB``."""
        if self.ldim != self.rdim:
            raise ValueError(f"BA needs a square product, got ldim={self.ldim}, rdim={self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix | Tensor:
        if isinstance(other, FactoredMatrix):
            # keep the smaller inner dimension
            if self.mdim <= other.mdim:
                return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
            return FactoredMatrix(self.A @ (self.B @ other.A), other.B)
        if isinstance(other, Tensor):
            if other.ndim == 1:
                return (self.A @ (self.B @ other[:, None]))[..., 0]
            if other.shape[-2] != self.rdim:
                raise ValueError(f"cannot multiply {tuple(self.shape)} by {tuple(other.shape)}: inner dims differ")
            return FactoredMatrix(self.A, self.B @ other)
        return NotImplemented

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix | Tensor:
        if isinstance(other, Tensor):
            if other.ndim == 1:
                return ((other[None, :] @ self.A) @ self.B)[..., 0, :]
            if other.shape[-1] != self.ldim:
                raise ValueError(f"cannot multiply {tuple(other.shape)} by {tuple(self.shape)}: inner dims differ")
            return FactoredMatrix(other @ self.A, self.B)
        return NotImplemented

    def __mul__(self, scalar: float | int | Tensor) -> FactoredMatrix:
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise ValueError("FactoredMatrix can only be scaled by a scalar")
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
    def Vh(self) -> Tensor:
        return self._svd[2].transpose(-2, -1)

    @property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues of ``AB`` (complex), computed as the ``mdim`` eigenvalues of ``BA``'s small form ``B @ A``."""
        if self.ldim != self.rdim:
            raise ValueError(f"eigenvalues need a square matrix, got {tuple(self.shape)}")
        A, B = self._factors_for_linalg()
        return torch.linalg.eig(B @ A).eigenvalues

    def norm(self) -> Tensor:
        """Frobenius norm (over the last two dims)."""
        return self.S.pow(2).sum(-1).sqrt()

    def get_corner(self, k: int = 3) -> Tensor:
        """Top-left ``k x k`` corner of ``AB`` (of every leading item), without forming the whole product."""
        return self.A[..., :k, :] @ self.B[..., :, :k]

    def collapse_l(self) -> Tensor:
        """``S[:, None] * V^T``: the matrix with ``A`` collapsed to an orthonormal basis."""
        return self.S[..., :, None] * self.Vh

    def collapse_r(self) -> Tensor:
        return self.U * self.S[..., None, :]

    def unsqueeze(self, dim: int) -> FactoredMatrix:
        if dim < 0:
            dim = self.ndim + dim + 1
        if dim > self.ndim - 2:
            raise ValueError("can only unsqueeze leading (batch) dimensions of a FactoredMatrix")
        return FactoredMatrix(self.A.unsqueeze(dim), self.B.unsqueeze(dim))

    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index leading dimensions only (e.g. ``model.OV[layer, head]``)."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        n_lead = self.ndim - 2
        if sum(1 for i in idx if i is not Ellipsis and i is not None) > n_lead:
            raise IndexError(
                f"FactoredMatrix of shape {tuple(self.shape)} can be indexed on its {n_lead} leading dim(s) only; "
                "use .AB[...] to index the matrix itself"
            )
        return FactoredMatrix(self.A[idx], self.B[idx])

    def to(self, *args: Any, **kwargs: Any) -> FactoredMatrix:
        return FactoredMatrix(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))
