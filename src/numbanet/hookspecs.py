"""The whole plugin surface of numbanet: three hooks.

A plugin is any module (or object) with functions decorated by :data:`hookimpl`, made
known through the ``numbanet`` entry-point group in its ``pyproject.toml``::

    [project.entry-points.numbanet]
    lion = "numbanet_lion"

numbanet's own optimizers, losses and layers are registered through these same hooks (see
:mod:`numbanet._builtin`), before any installed plugin. Each hook is called once per
plugin, lazily, the first time a name is looked up; an exception or a malformed return
value disables that plugin (with a warning naming it) and the others keep working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

from numbanet.specs import LossSpec, OptimizerSpec

if TYPE_CHECKING:
    from numbanet.nn.module import Module

PROJECT_NAME = "numbanet"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorator for plugin functions implementing a hook: ``@numbanet.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def numbanet_register_optimizers() -> Sequence[OptimizerSpec]:
    """Return the optimizers this plugin provides.

    Called once per plugin when numbanet first needs the optimizer registry
    (``get_optimizer``, ``list_optimizers``, ``numbanet plugins``).

    Returns:
        A list (or tuple) of :class:`~numbanet.OptimizerSpec`; an empty list is fine.

    Example::

        @numbanet.hookimpl
        def numbanet_register_optimizers():
            return [OptimizerSpec("lion", lion_kernel, {"lr": 1e-4, "betas": (0.9, 0.99),
                                                        "weight_decay": 0.0},
                                  slots=("exp_avg",))]
    """


@hookspec
def numbanet_register_losses() -> Sequence[LossSpec]:
    """Return the losses this plugin provides.

    Called once per plugin when numbanet first needs the loss registry
    (``get_loss``, ``list_losses``, ``model.compile(loss=...)``).

    Returns:
        A list (or tuple) of :class:`~numbanet.LossSpec`; an empty list is fine.

    Example::

        @numbanet.hookimpl
        def numbanet_register_losses():
            return [LossSpec("focal", focal_row_kernel, target="labels",
                             hyperparams={"gamma": 2.0}, output_activation="softmax")]
    """


@hookspec
def numbanet_register_layers() -> Sequence[type[Module]]:
    """Return the layer classes this plugin provides.

    Called once per plugin when numbanet first needs the layer registry
    (``numbanet.load``, ``Sequential.from_config``, ``numbanet plugins``). A layer is
    registered under its class's ``layer_type`` (the class name unless the class sets
    it), which is also what its ``get_config()["type"]`` returns. Layers you construct
    yourself need no registration; registering is what lets saved models that use them
    load again.

    Returns:
        A list (or tuple) of subclasses of :class:`~numbanet.Module` (the classes, not
        instances); an empty list is fine.

    Example::

        @numbanet.hookimpl
        def numbanet_register_layers():
            return [RMSNorm]
    """
