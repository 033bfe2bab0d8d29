"""Residual: ``y = x + f(x)``, where ``f`` is a short stack of layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from numbanet.kernels.residual import add_into
from numbanet.nn.module import (
    Module,
    Shape,
    backward_chain,
    check_roles,
    fuse_output_relus,
    fusion_partners,
)
from numbanet.nn.parameter import Parameter

__all__ = ["Residual"]


def _split(items: dict[str, Any], index: int) -> dict[str, Any]:
    prefix = f"{index}."
    return {name[len(prefix):]: v for name, v in items.items() if name.startswith(prefix)}


def _add(a: np.ndarray, b: np.ndarray, out: np.ndarray, relu: bool) -> None:
    """``out = a + b`` (rectified with ``relu``): the chunked kernel for the model's
    C-contiguous buffers, NumPy for anything else (the same values)."""
    if a.flags.c_contiguous and b.flags.c_contiguous and a.dtype == b.dtype == out.dtype:
        add_into(a, b, out, relu)
        return
    np.add(a, b, out=out)
    if relu:
        np.copyto(out, 0, where=out < 0)


class Residual(Module):
    """A residual block: ``y = x + f(x)``, ``f`` applying ``layers`` in order (He et al.,
    2016).

    Args:
        layers: the layers of ``f`` (layer objects, or their ``get_config()`` dicts, which
            are rebuilt through the layer registry, as :func:`numbanet.load` does). Their
            output must have the shape of their input, so the sum is defined.

    Inside a model the inner parameters are named ``"<i>.<j>.<name>"`` (layer ``j`` of
    the block at position ``i``: ``"3.0.weight"``), and so are their buffers; the block's
    :meth:`parameter_shapes` returns ``"<j>.<name>"``. Inner layers fuse activation
    derivatives with each other exactly as in a :class:`~numbanet.nn.Sequential` (Dense
    with ReLU under Dense); the block's first inner layer has no partner, because its
    input also feeds the skip connection.

    The usual post-activation block of a ResNet is ``Residual([conv, BatchNorm, ReLU,
    conv, BatchNorm])`` followed by ``Activation("relu")``. In a model that ReLU is
    applied as the sum is written, and the one inside the block by the BatchNorm below
    it (:func:`~numbanet.nn.module.fuse_output_relus`): no pass of their own forward.

    Example:
        >>> import numbanet as nbn
        >>> block = nbn.Residual([nbn.Dense(16, 16, activation="relu"), nbn.Dense(16, 16)])
        >>> model = nbn.Sequential([nbn.Dense(8, 16), block, nbn.Dense(16, 2)], seed=0)
        >>> print(*(p.name for p in model.parameters() if p.name.startswith("1.0.")))
        1.0.weight 1.0.bias
    """

    def __init__(self, layers: Sequence[Module | dict[str, Any]]) -> None:
        super().__init__()
        from numbanet.nn.registry import layer_from_config

        if isinstance(layers, (Module, dict, str)) or not isinstance(layers, Sequence):
            raise TypeError("Residual: layers must be a list of layers, e.g. "
                            f"[Dense(64, 64, activation='relu'), Dense(64, 64)], got "
                            f"{type(layers).__name__}")
        built: list[Module] = []
        for j, layer in enumerate(layers):
            if isinstance(layer, dict):
                layer = layer_from_config(layer)
            if not isinstance(layer, Module):
                raise TypeError(f"Residual: layers[{j}] must be a numbanet layer (or its "
                                f"config dict), got {type(layer).__name__}")
            if layer.input_kind != "real":
                raise ValueError(f"Residual: layers[{j}] ({layer!r}) takes integer indices; "
                                 "a residual block adds its input to its output, so its "
                                 "layers must take real numbers")
            built.append(layer)
        if not built:
            raise ValueError("Residual: layers must not be empty (y = x + f(x) needs at "
                             "least one layer in f)")
        if len({id(layer) for layer in built}) != len(built):
            raise ValueError("Residual: the same layer object appears twice in layers")
        self.layers: list[Module] = built
        self._partners = fusion_partners(built)
        fuse_output_relus(built)
        self._relu_output = False  # set_output_relu: a ReLU layer after the block

    # -- structure -----------------------------------------------------------------
    @property
    def input_shape(self) -> Shape | None:  # type: ignore[override]
        return self.layers[0].input_shape

    def parameter_shapes(self) -> list[tuple[str, Shape]]:
        return [(f"{j}.{name}", shape) for j, layer in enumerate(self.layers)
                for name, shape in layer.parameter_shapes()]

    def parameter_roles(self) -> dict[str, str]:
        return {f"{j}.{name}": role for j, layer in enumerate(self.layers)
                for name, role in check_roles(layer).items()}

    def buffer_shapes(self) -> list[tuple[str, Shape]]:
        return [(f"{j}.{name}", shape) for j, layer in enumerate(self.layers)
                for name, shape in layer.buffer_shapes()]

    def attach(self, params: dict[str, Parameter], dtype: np.dtype,
               buffers: dict[str, np.ndarray] | None = None) -> None:
        super().attach(params, dtype, buffers)
        for j, layer in enumerate(self.layers):
            layer.attach(_split(params, j), dtype, _split(dict(buffers or {}), j))

    def initialize(self, rng: np.random.Generator) -> None:
        for layer in self.layers:
            layer.initialize(rng)

    def set_rng(self, rng: np.random.Generator) -> None:
        for layer in self.layers:
            layer.set_rng(rng)

    def output_shape(self, in_shape: Shape) -> Shape:
        in_shape = tuple(in_shape)
        shape = in_shape
        for j, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as exc:
                raise ValueError(f"Residual layers[{j}] ({layer!r}): {exc}") from None
        if shape != in_shape:
            raise ValueError(
                f"{self!r} adds its input of shape {in_shape} to the output of its layers, "
                f"which have shape {shape}; make the layers map {in_shape} back to "
                f"{in_shape} (the last one should produce {in_shape[-1]} features), or "
                "put the shape-changing layer outside the block")
        return in_shape

    def get_config(self) -> dict[str, Any]:
        return {"type": self.layer_type, "layers": [layer.get_config() for layer in self.layers]}

    # -- computation ---------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        h = x
        for layer in self.layers:
            h = layer.forward(h, training)
        if h.shape != x.shape:
            raise ValueError(f"{self!r}: its layers turned input of shape {x.shape} into "
                             f"{h.shape}; a residual block needs the same shape")
        y = self.workspace.get("y", x.shape)
        _add(x, h, y, self._relu_output)
        return y

    def set_output_relu(self, on: bool) -> bool:
        # The sum is rectified as it is written; backward does not read it.
        self._relu_output = bool(on)
        return self._relu_output

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        # Through f (inner fusion as in Sequential), then the skip connection adds dy.
        df = backward_chain(self.layers, self._partners, dy, need_input_grad)
        if not need_input_grad:
            return None
        assert df is not None
        dx = self.workspace.get("dx", dy.shape)
        _add(dy, df, dx, False)
        return dx

    def __repr__(self) -> str:
        return f"Residual([{', '.join(repr(layer) for layer in self.layers)}])"
