"""Embedding: a lookup table of learned vectors, indexed by integers."""

from __future__ import annotations

from typing import Any

import numpy as np

from numbanet._validation import Integer, Optional, check_arg
from numbanet.kernels.embedding import (
    ROW_CHUNK,
    embedding_backward,
    embedding_forward,
    scatter_workspace,
)
from numbanet.nn.module import Module, Shape

__all__ = ["Embedding"]

_SIZE = Integer(min=1)


class Embedding(Module):
    """Map integer indices to rows of a learned table, as ``torch.nn.Embedding``.

    Args:
        num_embeddings: rows of the table; indices run from 0 to ``num_embeddings - 1``.
        embedding_dim: length ``dim`` of each row.
        padding_idx: a row that stays zero and receives no gradient (the vector of a
            padding token), or ``None``. Negative values count from the end, as in
            PyTorch (``-1`` is the last row); the config stores the non-negative value.

    Shapes: indices ``(N,)`` or ``(N, L)`` give ``(N, dim)`` or ``(N, L, dim)``; the
    parameter ``weight`` is ``(num_embeddings, dim)``, initialised ``N(0, 1)`` as in
    PyTorch (the padding row zero), role ``"weight"``.

    The layer takes integer input (``input_kind = "index"``), so it must be the model's
    first layer: the model hands it ``int64`` indices and :meth:`check_input` rejects an
    index outside ``[0, num_embeddings)`` before any kernel runs. Its input gradient is
    ``None`` (indices have none).

    Backward groups the indices by row (a stable counting sort) and sums each row's
    ``dy`` rows in index order, in parallel over blocks of table rows, so the gradient is
    bit-identical for any thread count (:mod:`numbanet.kernels.embedding`). It writes
    the whole ``(num_embeddings, dim)`` gradient (a dense gradient, like PyTorch's
    default ``sparse=False``).
    """

    input_kind = "index"

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        where = "Embedding"
        self.num_embeddings = check_arg("num_embeddings", num_embeddings, _SIZE, where=where)
        self.embedding_dim = check_arg("embedding_dim", embedding_dim, _SIZE, where=where)
        n = self.num_embeddings
        padding_idx = check_arg("padding_idx", padding_idx,
                                Optional(Integer(min=-n, max=n - 1)), where=where)
        self.padding_idx = None if padding_idx is None else padding_idx % n
        self._idx: np.ndarray | None = None
        # The scatter's row grouping (counting sort) per table row; see kernels.embedding.
        self._starts, self._cursor, _ = scatter_workspace(self.num_embeddings, 0)

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        return [("weight", (self.num_embeddings, self.embedding_dim))]

    def parameter_roles(self) -> dict[str, str]:
        return {"weight": "weight"}

    def initialize(self, rng: np.random.Generator) -> None:
        weight = self._params["weight"].value
        # Drawn in float64 and cast: float32 and float64 models with one seed agree.
        weight[...] = rng.standard_normal(weight.shape)
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0

    @property
    def weight(self) -> Any:
        """``(num_embeddings, embedding_dim)``."""
        return self.parameter("weight")

    def output_shape(self, in_shape: Shape) -> Shape:
        in_shape = tuple(in_shape)
        if len(in_shape) > 1:
            raise ValueError(
                f"{self!r} takes indices shaped (batch,) or (batch, length), but receives "
                f"samples of shape {in_shape}; flatten the index array to (batch, length)")
        return (*in_shape, self.embedding_dim)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "padding_idx": self.padding_idx}

    def check_input(self, x: np.ndarray, name: str) -> None:
        """Reject indices outside ``[0, num_embeddings)``, naming the first such value."""
        if x.size == 0:
            return
        n = self.num_embeddings
        if int(x.min()) >= 0 and int(x.max()) < n:
            return
        bad = (x < 0) | (x >= n)
        position = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), x.shape))
        value = int(x[position])
        where = position[0] if len(position) == 1 else position
        raise ValueError(
            f"{name} holds index {value} at position {where}, but {self!r} takes indices "
            f"in [0, {n - 1}] ({int(bad.sum())} of {x.size} out of range); map them into "
            f"range, or make num_embeddings larger than the largest index")

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if x.dtype != np.int64 or not x.flags.c_contiguous:
            raise TypeError(
                f"{self!r} received {x.dtype} input; it takes integer indices, so it must be "
                "the model's first layer (the model then passes C-contiguous int64 indices)")
        if x.ndim not in (1, 2):
            raise ValueError(f"{self!r} takes indices shaped (batch,) or (batch, length), got "
                             f"shape {x.shape}")
        dim = self.embedding_dim
        y = self.workspace.get("y", (*x.shape, dim))
        idx = x.reshape(-1)
        # Per-chunk counts of out-of-range indices the gather reports.
        counts = self.workspace.get("counts", -(-idx.shape[0] // ROW_CHUNK), dtype=np.int64,
                                    rows=x.shape[0])
        bad = embedding_forward(idx, self._params["weight"].value,
                                y.reshape(idx.shape[0], dim), counts)
        if bad:
            self._idx = None
            self.check_input(x, "the input")  # raises, naming the first bad index
        self._idx = idx
        return y

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> None:
        """Fill the gradient of ``weight``; the input gradient is ``None`` (indices have
        none), whatever ``need_input_grad`` says."""
        idx = self._idx
        if idx is None:
            raise RuntimeError("Embedding.backward called before forward")
        pad = -1 if self.padding_idx is None else self.padding_idx
        order = self.workspace.get("order", idx.shape[0], dtype=np.int64, rows=dy.shape[0])
        embedding_backward(idx, dy.reshape(idx.shape[0], self.embedding_dim), pad,
                           self._params["weight"].grad, self._starts, self._cursor, order)
        return None

    def __repr__(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad})"
