"""The conformance suite over every registered optimizer and loss, installed plugins too.

Built-ins are checked with tuned learning rates in tests/optim and tests/losses; this
module covers whatever else is installed (e.g. numbanet-lion, numbanet-focal in CI), at
the plugin's default hyperparameters, requiring only that the quadratic does not grow.
"""

from __future__ import annotations

import warnings

import pytest

import numbanet.plugins as nbp
from numbanet.testing import check_loss, check_optimizer


def _plugin_items(kind: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nbp.PluginWarning)
        nbp.reload_plugins()
        ids = (nbp.list_optimizers if kind == "optimizers" else nbp.list_losses)(qualified=True)
    return [q for q in ids if not q.startswith(f"{nbp.BUILTIN_DISTRIBUTION}:")]


PLUGIN_OPTIMIZERS = _plugin_items("optimizers")
PLUGIN_LOSSES = _plugin_items("losses")


@pytest.mark.skipif(not PLUGIN_OPTIMIZERS, reason="no optimizer plugins installed")
@pytest.mark.parametrize("qualified_id", PLUGIN_OPTIMIZERS or ["none"])
def test_installed_plugin_optimizer_conforms(qualified_id):
    check_optimizer(qualified_id, reduce_to=0.999)


@pytest.mark.skipif(not PLUGIN_LOSSES, reason="no loss plugins installed")
@pytest.mark.parametrize("qualified_id", PLUGIN_LOSSES or ["none"])
def test_installed_plugin_loss_conforms(qualified_id):
    check_loss(qualified_id)
