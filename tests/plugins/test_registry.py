"""Plugin registration, name clashes, broken plugins and the environment switches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import numbanet.plugins as nbp
from numbanet import hookspecs
from numbanet.specs import OptimizerSpec

GOOD = '''
@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("halfstep", half_step_kernel, {"lr": 0.1})]


@hookimpl
def numbanet_register_losses():
    return [LossSpec("rowsum", row_sum_kernel, target="dense")]
'''


def _names(kind="optimizers"):
    return nbp.list_optimizers() if kind == "optimizers" else nbp.list_losses()


def test_builtins_are_registered_through_the_hooks():
    pm = nbp.get_plugin_manager()
    impls = pm.hook.numbanet_register_optimizers.get_hookimpls()
    assert "numbanet.adam" in {impl.plugin_name for impl in impls}
    assert "numbanet:adam" in nbp.list_optimizers(qualified=True)
    assert nbp.get_optimizer("numbanet:adam").qualified_id == "numbanet:adam"
    report = {r["name"]: r for r in nbp.plugin_report()}
    assert report["numbanet"]["status"] == "loaded"
    assert "cross_entropy" in report["numbanet"]["losses"]


def test_installed_plugin_is_found_through_its_entry_point(make_dist):
    make_dist("numbanet-half", GOOD)
    assert "halfstep" in nbp.list_optimizers()
    assert "rowsum" in nbp.list_losses()
    opt = nbp.get_optimizer("halfstep", lr=0.2)
    assert opt.qualified_id == "numbanet-half:halfstep"
    p = np.ones(4)
    opt.step(p, np.ones(4))
    np.testing.assert_allclose(p, 0.9)
    loss = nbp.get_loss("numbanet-half:rowsum")
    x = np.arange(6.0).reshape(2, 3)
    assert loss.forward(x, np.zeros((2, 3))) == pytest.approx(15.0 / 2)  # mean over rows
    report = {r["name"]: r for r in nbp.plugin_report()}
    assert report["numbanet-half"] == {
        "name": "numbanet-half", "version": "1.0", "status": "loaded", "error": None,
        "entry_points": ["numbanet-half:numbanet_half"], "optimizers": ["halfstep"],
        "losses": ["rowsum"], "layers": [],
    }


def test_plugin_shadowing_a_builtin_warns_and_does_not_replace_it(make_dist):
    make_dist("shady", '''
@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("adam", half_step_kernel, {"lr": 0.1})]
''')
    with pytest.warns(nbp.PluginWarning, match=r"shady:adam shadows numbanet's built-in"):
        names = nbp.list_optimizers()
    assert "adam" in names and "shady:adam" in names
    assert nbp.get_optimizer("adam").qualified_id == "numbanet:adam"
    assert nbp.get_optimizer("shady:adam").qualified_id == "shady:adam"


def test_two_plugins_with_one_name_fail_only_when_that_name_is_used(make_dist):
    body = '''
@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("twin", half_step_kernel, {"lr": 0.1}),
            OptimizerSpec("only_{tag}", half_step_kernel, {"lr": 0.1})]
'''
    make_dist("twin-a", body.replace("{tag}", "a"))
    make_dist("twin-b", body.replace("{tag}", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = nbp.list_optimizers()
    assert {"only_a", "only_b", "twin-a:twin", "twin-b:twin"} <= set(names)
    assert "twin" not in names
    with pytest.raises(ValueError, match=r"'twin' is provided by several plugins: "
                                         r"twin-a:twin, twin-b:twin"):
        nbp.get_optimizer("twin")
    assert nbp.get_optimizer("twin-b:twin").qualified_id == "twin-b:twin"
    assert nbp.get_optimizer("only_a").qualified_id == "twin-a:only_a"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('''
@hookimpl
def numbanet_register_optimizers():
    raise RuntimeError("boom")
''', r"plugin 'broken' is disabled: hook numbanet_register_optimizers raised "
     r"RuntimeError: boom"),
        ('''
@hookimpl
def numbanet_register_optimizers():
    return "adam"
''', r"plugin 'broken' is disabled: hook numbanet_register_optimizers returned str"),
        ('''
@hookimpl
def numbanet_register_losses():
    return [OptimizerSpec("x", half_step_kernel, {"lr": 0.1})]
''', r"plugin 'broken' is disabled: hook numbanet_register_losses returned .*expected LossSpec"),
        ('''
raise ImportError("missing dependency")
''', r"plugin 'broken' is disabled: importing entry point broken = .* raised ImportError"),
        ('''
@hookimpl
def numbanet_register_optimizers(unexpected_arg):
    return []
''', r"plugin 'broken' is disabled: could not register"),
    ],
    ids=["raises", "not-a-list", "wrong-spec-type", "import-error", "bad-signature"],
)
def test_broken_plugin_is_disabled_with_a_warning_and_others_keep_working(
    make_dist, body, message
):
    make_dist("numbanet-half", GOOD)
    make_dist("broken", body + GOOD.replace("numbanet_register_optimizers",
                                           "_unused").replace("numbanet_register_losses",
                                                              "_unused2"))
    with pytest.warns(nbp.PluginWarning, match=message):
        names = nbp.list_optimizers()
    assert "halfstep" in names and "adam" in names
    report = {r["name"]: r for r in nbp.plugin_report()}
    assert report["broken"]["status"] == "failed"
    assert report["broken"]["optimizers"] == [] and report["broken"]["losses"] == []
    assert report["numbanet-half"]["status"] == "loaded"


def test_broken_optimizer_hook_also_drops_the_plugins_losses(make_dist):
    make_dist("halfbroken", '''
@hookimpl
def numbanet_register_losses():
    return [LossSpec("okloss", row_sum_kernel)]


@hookimpl
def numbanet_register_optimizers():
    raise ValueError("bad")
''')
    with pytest.warns(nbp.PluginWarning, match="halfbroken"):
        assert "okloss" not in nbp.list_losses()


def test_autoload_off_loads_only_builtins(make_dist, monkeypatch):
    make_dist("numbanet-half", GOOD)
    monkeypatch.setenv("NUMBANET_DISABLE_PLUGIN_AUTOLOAD", "1")
    nbp.reload_plugins()
    assert "halfstep" not in nbp.list_optimizers()
    assert "adam" in nbp.list_optimizers()
    assert [r["name"] for r in nbp.plugin_report()] == ["numbanet"]


def test_allow_list_loads_only_named_distributions(make_dist, monkeypatch):
    make_dist("numbanet-half", GOOD)
    make_dist("other-plugin", '''
@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("other", half_step_kernel, {"lr": 0.1})]
''')
    monkeypatch.setenv("NUMBANET_PLUGINS", "Numbanet_Half")  # normalised comparison
    nbp.reload_plugins()
    names = nbp.list_optimizers()
    assert "halfstep" in names and "other" not in names and "sgd" in names
    report = {r["name"]: r for r in nbp.plugin_report()}
    assert report["other-plugin"]["status"] == "skipped"
    assert "NUMBANET_PLUGINS" in report["other-plugin"]["error"]


def test_register_plugin_at_runtime():
    class Plugin:
        @hookspecs.hookimpl
        def numbanet_register_optimizers(self):
            from numbanet._builtin.sgd import SGD

            return [OptimizerSpec("runtime_sgd", SGD.kernel, {**SGD.hyperparams, "lr": 0.5},
                                  slots=SGD.slots, prepare=SGD.prepare)]

    nbp.register_plugin(Plugin(), "mine")
    try:
        opt = nbp.get_optimizer("runtime_sgd")
        assert opt.qualified_id == "mine:runtime_sgd"
        p = np.ones(3)
        opt.step(p, np.ones(3))
        np.testing.assert_allclose(p, 0.5)
        with pytest.raises(ValueError, match="already registered"):
            nbp.register_plugin(Plugin(), "mine")
    finally:
        nbp.unregister_plugin("mine")
    assert "runtime_sgd" not in nbp.list_optimizers()


def test_unregistered_spec_can_be_used_directly():
    from numbanet._builtin.sgd import SGD

    opt = nbp.get_optimizer(SGD, lr=0.25)
    assert opt.qualified_id == "unregistered:sgd"


def test_kernel_defined_in_a_function_uses_an_uncached_fallback_driver():
    from numbanet._jit import kernel

    @kernel(cache=False)
    def local_kernel(i, p, g, gs, slots, hp, sc):
        p[i] = p[i] - hp[0] * g[i] * gs

    opt = nbp.get_optimizer(OptimizerSpec("local", local_kernel, {"lr": 1.0}))
    p = np.zeros(3)
    opt.step(p, np.ones(3))
    np.testing.assert_allclose(p, -1.0)
    assert not opt.driver.disk_cached


def test_unqualified_unknown_and_bad_qualified_ids():
    with pytest.raises(ValueError, match="unknown optimizer 'nope:adam'"):
        nbp.get_optimizer("nope:adam")
    with pytest.raises(ValueError, match="unknown loss 'numbanet:adam'"):
        nbp.get_loss("numbanet:adam")


def test_plugin_kernel_that_does_not_compile_gives_an_error_naming_the_optimizer():
    from numbanet._jit import kernel

    @kernel(cache=False)
    def bad_kernel(i, p, g, gs, slots, hp, sc):
        p[i] = hp[7]  # hp has one entry: a typing error

    opt = nbp.get_optimizer(OptimizerSpec("badkernel", bad_kernel, {"lr": 1.0}))
    with pytest.raises(TypeError, match=r"optimizer 'unregistered:badkernel': its kernel does "
                                        r"not compile for float64 parameters"):
        opt.step(np.zeros(3), np.zeros(3))


def test_loss_kernel_that_does_not_compile_gives_an_error_naming_the_loss():
    from numbanet._jit import kernel
    from numbanet.specs import LossSpec

    @kernel(cache=False)
    def bad_row(r, x, t, aux, hp, gs, grad):
        return x[r, 0] + "text"

    loss = nbp.get_loss(LossSpec("badrow", bad_row))
    with pytest.raises(TypeError, match=r"loss 'unregistered:badrow': its kernel does not "
                                        r"compile for float64 outputs"):
        loss.forward(np.zeros((2, 2)), np.zeros((2, 2)))


def test_plain_python_kernel_is_compiled_by_the_host(make_dist):
    make_dist("plainplug", '''
def plain_kernel(i, p, g, gs, slots, hp, sc):
    p[i] = p[i] - hp[0] * g[i] * gs


@hookimpl
def numbanet_register_optimizers():
    return [OptimizerSpec("plain", plain_kernel, {"lr": 0.5})]
''')
    opt = nbp.get_optimizer("plain")
    p = np.ones(5)
    opt.step(p, np.ones(5))
    np.testing.assert_allclose(p, 0.5)
    assert opt.driver.disk_cached


def test_plugin_without_hookimpl_markers_warns_naming_module_and_fix(make_dist):
    module = make_dist("numbanet-forgetful", '''
def numbanet_register_optimizers():
    return [OptimizerSpec("forgot", half_step_kernel, {"lr": 0.1})]
''')
    with pytest.warns(nbp.PluginWarning, match=(
            rf"numbanet-forgetful.*{module}.*defines numbanet_register_optimizers without "
            r"@numbanet.hookimpl.*decorate it with @numbanet.hookimpl")):
        names = nbp.list_optimizers()
    assert "forgot" not in names


def test_plugin_with_no_hook_at_all_warns(make_dist):
    make_dist("numbanet-empty", "VALUE = 1\n")
    with pytest.warns(nbp.PluginWarning, match=r"numbanet-empty.*implements no numbanet hook"):
        nbp.list_losses()


def test_plugins_cli_shows_the_no_hook_note(make_dist, capsys):
    from numbanet import _plugins_cli

    make_dist("numbanet-empty", "VALUE = 1\n")
    assert _plugins_cli.main([]) == 0
    assert "note: numbanet plugin 'numbanet-empty'" in capsys.readouterr().out
