"""numbanet's own optimizers, losses and layers, registered through the public hooks.

Each module here is a plugin like any third-party one: it implements
``numbanet_register_optimizers``, ``numbanet_register_losses`` or
``numbanet_register_layers`` and is registered under
the distribution name ``numbanet`` before installed plugins load.
"""

from numbanet._builtin import (
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    layers,
    losses,
    nadam,
    radam,
    rmsprop,
    sgd,
)

#: Plugin modules, in registration order.
MODULES = (sgd, adagrad, rmsprop, adadelta, adam, adamw, adamax, nadam, radam, losses,
           layers)
