"""numbanet's own layers, registered through the same hook a layer plugin implements."""

from __future__ import annotations

from numbanet.hookspecs import hookimpl
from numbanet.nn.activation import Activation
from numbanet.nn.dense import Dense
from numbanet.nn.dropout import Dropout


@hookimpl
def numbanet_register_layers():
    return [Dense, Activation, Dropout]
