"""Layers, the layer contract and the Sequential model."""

from numbanet.nn.activation import Activation
from numbanet.nn.dense import Dense
from numbanet.nn.dropout import Dropout
from numbanet.nn.module import FusedDerivative, Module, Workspace
from numbanet.nn.parameter import ROLES, Parameter
from numbanet.nn.registry import layer_from_config
from numbanet.nn.sequential import Sequential

__all__ = [
    "ROLES",
    "Activation",
    "Dense",
    "Dropout",
    "FusedDerivative",
    "Module",
    "Parameter",
    "Sequential",
    "Workspace",
    "layer_from_config",
]
