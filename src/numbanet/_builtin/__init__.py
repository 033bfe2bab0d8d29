"""numbanet's own optimizers and losses, registered through the public hooks.

Each module here is a plugin like any third-party one: it implements
``numbanet_register_optimizers`` or ``numbanet_register_losses`` and is registered under
the distribution name ``numbanet`` before installed plugins load.
"""

from numbanet._builtin import (
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    losses,
    nadam,
    radam,
    rmsprop,
    sgd,
)

#: Plugin modules, in registration order.
MODULES = (sgd, adagrad, rmsprop, adadelta, adam, adamw, adamax, nadam, radam, losses)
