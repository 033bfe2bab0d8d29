"""Faulty plugins never take down the host or the other plugins; messages name the plugin.

Each test installs a fake distribution (see ``fake_plugin`` in conftest) next to a good
one, then checks that (1) the fault surfaces as a warning or an exception naming the
plugin, (2) built-ins and the good plugin keep working in the same process.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import numbanet as nbn
import numbanet.plugins as nbp

GOOD = '''
@kernel
def good_kernel(i, p, g, gs, slots, hp, sc):
    p[i] -= hp[0] * g[i] * gs


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("goodstep", good_kernel, {"lr": 0.1})]
'''


def _still_working():
    """The built-in Adam and the good plugin both take a correct step."""
    for name in ("adam", "goodstep"):
        opt = nbn.get_optimizer(name, lr=0.1)
        p, g = np.ones(64), np.full(64, 0.5)
        opt.step(p, g)
        assert np.isfinite(p).all() and (p < 1).all()


LOAD_FAULTS = {
    "import-raises": ('raise RuntimeError("cannot import")\n', "importing entry point"),
    "import-syntax-error": ("def broken(:\n", "SyntaxError"),
    "hook-raises": ('''
@hookimpl
def numbanet_register_optimizers():
    raise KeyError("no config")
''', "KeyError"),
    "hook-returns-none-list": ('''
@hookimpl
def numbanet_register_optimizers():
    return [None]
''', "expected OptimizerSpec"),
    "spec-bad-name": ('''
@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("Bad Name", None, {"lr": 0.1})]
''', "lowercase identifier"),
    "spec-no-lr": ('''
@kernel
def k(i, p, g, gs, slots, hp, sc):
    p[i] -= g[i]


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("nolr", k, {"momentum": 0.9})]
''', "must include 'lr'"),
    "spec-kernel-not-callable": ('''
@hookimpl
def numbanet_register_losses():
    return [LossSpec("notcallable", "row_kernel")]
''', "kernel"),
    "spec-hyperparam-string": ('''
@kernel
def k(i, p, g, gs, slots, hp, sc):
    p[i] -= g[i]


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("strhp", k, {"lr": "0.1"})]
''', "lr"),
}


@pytest.mark.parametrize("fault", sorted(LOAD_FAULTS))
def test_plugin_failing_to_load_is_disabled_by_name_and_the_rest_works(fake_plugin, fault):
    body, detail = LOAD_FAULTS[fault]
    fake_plugin("numbanet-good", GOOD)
    fake_plugin("faulty-plugin", body)
    with pytest.warns(nbp.PluginWarning, match="plugin 'faulty-plugin' is disabled") as rec:
        names = nbp.list_optimizers()
    assert any(detail in str(w.message) for w in rec), [str(w.message) for w in rec]
    assert "goodstep" in names
    report = {r["name"]: r for r in nbp.plugin_report()}
    assert report["faulty-plugin"]["status"] == "failed"
    _still_working()


def test_kernel_that_does_not_compile_names_the_plugin(fake_plugin):
    fake_plugin("numbanet-good", GOOD)
    fake_plugin("typo-plugin", '''
@kernel
def k(i, p, g, gs, slots, hp, sc):
    p[i] -= hp[0] * g[i] * "x"


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("typo", k, {"lr": 0.1})]
''')
    opt = nbn.get_optimizer("typo")
    with pytest.raises(TypeError, match="typo-plugin:typo.*does not compile"):
        opt.step(np.zeros(8), np.ones(8))
    _still_working()


def test_kernel_compile_error_shows_the_root_cause_and_counts_the_scalars(fake_plugin):
    """Issue 16, item 18: the NameError Numba buries under "Failed in nopython mode
    pipeline" is the message, with the kernel's name; no prepare means 0 scalars."""
    fake_plugin("typo-plugin", '''
@kernel
def undefined_name_kernel(i, p, g, gs, slots, hp, sc):
    p[i] -= hp[0] * g[i] * learning_rate


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("nametypo", undefined_name_kernel, {"lr": 0.1})]
''')
    opt = nbn.get_optimizer("nametypo")
    with pytest.raises(TypeError) as info:
        opt.step(np.zeros(8), np.ones(8))
    message = str(info.value)
    assert "NameError: name 'learning_rate' is not defined" in message
    assert "in the kernel undefined_name_kernel" in message
    assert "0 per-step scalars" in message and "1 hyperparameter value in hp" in message
    assert "Failed in nopython mode pipeline" not in message


RUNTIME_FAULTS = {
    "kernel-raises": '''
@kernel
def k(i, p, g, gs, slots, hp, sc):
    if g[i] > 0.5:
        raise ValueError("gradient too large")
    p[i] -= hp[0] * g[i]


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("faulty", k, {"lr": 0.1})]
''',
    "prepare-raises": '''
@kernel
def k(i, p, g, gs, slots, hp, sc):
    p[i] -= hp[0] * g[i] * sc[0]


def prepare(step, hp):
    return (1.0 / (step - step),)


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("faulty", k, {"lr": 0.1}, prepare=prepare)]
''',
    "prepare-returns-garbage": '''
@kernel
def k(i, p, g, gs, slots, hp, sc):
    p[i] -= hp[0] * g[i] * sc[0]


def prepare(step, hp):
    return "abc"


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("faulty", k, {"lr": 0.1}, prepare=prepare)]
''',
}


@pytest.mark.parametrize("fault", sorted(RUNTIME_FAULTS))
def test_runtime_fault_in_a_plugin_optimizer_leaves_the_host_working(fake_plugin, fault):
    fake_plugin("numbanet-good", GOOD)
    fake_plugin("faulty-plugin", RUNTIME_FAULTS[fault])
    opt = nbn.get_optimizer("faulty")
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is the plugin's
        opt.step(np.zeros(8), np.ones(8))
    assert not isinstance(info.value, (SystemExit, KeyboardInterrupt))
    _still_working()


@pytest.mark.parametrize("fault", sorted(RUNTIME_FAULTS))
def test_runtime_fault_in_a_plugin_optimizer_names_the_plugin(fake_plugin, fault):
    fake_plugin("faulty-plugin", RUNTIME_FAULTS[fault])
    opt = nbn.get_optimizer("faulty")
    with pytest.raises(Exception, match="faulty-plugin"):  # noqa: PT011
        opt.step(np.zeros(8), np.ones(8))


def test_plugin_fault_during_fit_stops_fit_and_the_model_can_be_recompiled(fake_plugin,
                                                                          model_factory,
                                                                          data_factory):
    fake_plugin("faulty-plugin", RUNTIME_FAULTS["kernel-raises"])
    model = model_factory(optimizer="sgd", lr=0.1)
    X, y = data_factory()
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("faulty", lr=10.0))
    with pytest.raises(Exception, match="gradient too large"):  # noqa: PT011
        model.fit(X * 100, y, epochs=2, batch_size=8, verbose=0)
    model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("sgd", lr=0.1))
    history = model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history["loss"]).all()


def test_autoload_off_never_imports_installed_plugins(fake_plugin, monkeypatch, tmp_path):
    marker = tmp_path / "imported"
    fake_plugin("side-effect", f'''
open({str(marker)!r}, "w").close()
''')
    monkeypatch.setenv(nbp.AUTOLOAD_ENV, "1")
    nbp.reload_plugins()
    with warnings.catch_warnings():
        warnings.simplefilter("error", nbp.PluginWarning)
        nbp.list_optimizers()
    assert not marker.exists()
    monkeypatch.delenv(nbp.AUTOLOAD_ENV)
    nbp.reload_plugins()
    with pytest.warns(nbp.PluginWarning, match="implements no numbanet hook"):
        nbp.list_optimizers()
    assert marker.exists()  # installing a plugin means its module runs at first lookup


@pytest.mark.parametrize("where", ["import", "hook"])
def test_plugin_calling_sys_exit_is_disabled_not_fatal(fake_plugin, where):
    body = ("import sys\nsys.exit(3)\n" if where == "import" else '''
import sys


@hookimpl
def numbanet_register_optimizers():
    sys.exit(3)
''')
    fake_plugin("exiting-plugin", body)
    try:
        with pytest.warns(nbp.PluginWarning, match="exiting-plugin"):
            names = nbp.list_optimizers()
    except SystemExit:
        pytest.fail("a plugin's sys.exit() ended the host")
    assert "adam" in names
