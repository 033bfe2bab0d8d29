"""numbanet's own layers, registered through the same hook a layer plugin implements."""

from __future__ import annotations

from numbanet.hookspecs import hookimpl
from numbanet.nn.activation import Activation
from numbanet.nn.conv import Conv2D
from numbanet.nn.dense import Dense
from numbanet.nn.dropout import Dropout
from numbanet.nn.embedding import Embedding
from numbanet.nn.flatten import Flatten
from numbanet.nn.norm import BatchNorm, LayerNorm
from numbanet.nn.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from numbanet.nn.residual import Residual


@hookimpl
def numbanet_register_layers():
    return [Dense, Activation, Dropout, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D,
            Flatten, BatchNorm, LayerNorm, Embedding, Residual]
