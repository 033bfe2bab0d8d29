"""Layers, the layer contract and the Sequential model."""

from numbanet.nn.activation import Activation
from numbanet.nn.conv import Conv2D
from numbanet.nn.dense import Dense
from numbanet.nn.dropout import Dropout
from numbanet.nn.embedding import Embedding
from numbanet.nn.flatten import Flatten
from numbanet.nn.module import FusedDerivative, Module, Workspace
from numbanet.nn.norm import BatchNorm, LayerNorm
from numbanet.nn.parameter import ROLES, Parameter
from numbanet.nn.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from numbanet.nn.registry import layer_from_config
from numbanet.nn.residual import Residual
from numbanet.nn.sequential import Sequential

__all__ = [
    "ROLES",
    "Activation",
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "FusedDerivative",
    "GlobalAvgPool2D",
    "LayerNorm",
    "MaxPool2D",
    "Module",
    "Parameter",
    "Residual",
    "Sequential",
    "Workspace",
    "layer_from_config",
]
