"""The Optimizer host: argument errors, state, clipping, recompilation, threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import numbanet.plugins as nbp
from numbanet.kernels.updates import SERIAL_THRESHOLD
from numbanet.testing import check_optimizer

# Learning rates at which each built-in shrinks the conformance quadratic in 200 steps.
CONFORMANCE_LR = {"sgd": 0.1, "adagrad": 0.3, "rmsprop": 0.01, "adadelta": 1.0,
                  "adam": 0.05, "adamw": 0.05, "adamax": 0.05, "nadam": 0.05, "radam": 0.05}


@pytest.mark.parametrize("name", sorted(CONFORMANCE_LR))
def test_builtin_optimizer_passes_conformance(name):
    check_optimizer(name, lr=CONFORMANCE_LR[name])


def test_every_registered_optimizer_is_in_the_conformance_table():
    builtins = {q.split(":")[1] for q in nbp.list_optimizers(qualified=True)
                if q.startswith("numbanet:")}
    assert builtins == set(CONFORMANCE_LR)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"lr": "x"}, TypeError, r"optimizer 'adam': lr must be a number"),
        ({"lr": -1.0}, ValueError, r"optimizer 'adam': lr must be in \[0, inf\)"),
        ({"lr": float("nan")}, ValueError, r"lr must be"),
        ({"betas": (0.9,)}, ValueError, r"optimizer 'adam': betas must have 2 elements"),
        ({"betas": 0.9}, TypeError, r"optimizer 'adam': betas must be a tuple of 2 floats"),
        ({"betas": (0.9, 1.0)}, ValueError, r"betas must be in \[0, 1\)"),
        ({"amsgrad": "yes"}, TypeError, r"amsgrad must be a bool"),
        ({"momentum": 0.9}, ValueError, r"optimizer 'adam': unknown hyperparameter 'momentum'"),
    ],
)
def test_bad_hyperparameters_raise_naming_optimizer_and_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nbp.get_optimizer("adam", **kwargs)


def test_nesterov_without_momentum_is_rejected():
    with pytest.raises(ValueError, match="nesterov"):
        nbp.get_optimizer("sgd", nesterov=True)


def test_unknown_optimizer_suggests_close_name():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adma'; did you mean .*'adam'"):
        nbp.get_optimizer("adma")
    with pytest.raises(TypeError, match="optimizer name must be a str"):
        nbp.get_optimizer(3)


def test_lr_setter_validates():
    opt = nbp.get_optimizer("sgd", lr=0.1)
    opt.lr = 0.01
    assert opt.lr == 0.01 and opt.hyperparams["lr"] == 0.01
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -0.5


def test_step_rejects_bad_buffers():
    opt = nbp.get_optimizer("sgd")
    p = np.zeros(8)
    with pytest.raises(TypeError, match="grads must have dtype float64"):
        opt.step(p, np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="grads must have shape"):
        opt.step(p, np.zeros(7))
    with pytest.raises(ValueError, match="params must be 1-D"):
        opt.step(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(TypeError, match="params must be a numpy.ndarray"):
        opt.step([0.0], [0.0])
    with pytest.raises(TypeError, match="grad_scale"):
        opt.step(p, np.zeros(8), grad_scale="2")
    opt.step(p, np.zeros(8))
    with pytest.raises(ValueError, match="state was created for shape"):
        opt.step(np.zeros(9), np.zeros(9))


def test_sgd_step_is_the_textbook_update():
    opt = nbp.get_optimizer("sgd", lr=0.1)
    p = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, 0.5, -1.0])
    opt.step(p, g, grad_scale=2.0)
    np.testing.assert_allclose(p, [0.9, -2.1, 3.2])
    assert opt.step_count == 1 and opt.qualified_id == "numbanet:sgd"


def test_max_grad_norm_matches_clip_then_step():
    g = np.array([3.0, 4.0])  # norm 5
    p = np.zeros(2)
    nbp.get_optimizer("sgd", lr=1.0, max_grad_norm=1.0).step(p, g)
    np.testing.assert_allclose(p, -g / (5.0 + 1e-6), rtol=1e-12)
    q = np.zeros(2)
    nbp.get_optimizer("sgd", lr=1.0, max_grad_norm=10.0).step(q, g)
    np.testing.assert_allclose(q, -g)
    with pytest.raises(ValueError, match="max_grad_norm"):
        nbp.get_optimizer("sgd", max_grad_norm=0.0)


def test_state_dict_is_keyed_by_parameter_name_and_loads_before_first_step():
    layout = [("0.weight", 0, 6, (2, 3)), ("0.bias", 8, 10, (2,))]  # 6..8 is padding
    p = np.linspace(-1, 1, 10)
    opt = nbp.get_optimizer("adam", lr=0.1)
    for _ in range(2):
        opt.step(p, np.cos(p))
    state = opt.state_dict(layout)
    assert state["optimizer"] == "numbanet:adam" and state["step_count"] == 2
    assert state["slots"]["exp_avg"]["0.weight"].shape == (2, 3)
    assert set(state["slots"]["exp_avg"]) == {"0.weight", "0.bias"}
    fresh = nbp.get_optimizer("adam", lr=0.5)
    fresh.load_state_dict(state, layout)
    assert fresh.lr == 0.1 and fresh.step_count == 2
    q = p.copy()
    opt.step(p, np.cos(p))
    fresh.step(q, np.cos(q))
    np.testing.assert_array_equal(p[:6], q[:6])
    np.testing.assert_array_equal(p[8:], q[8:])


def test_load_state_dict_rejects_other_optimizer_and_bad_shapes():
    layout = [("w", 0, 4, (4,))]
    sgd = nbp.get_optimizer("sgd", momentum=0.9)
    sgd.step(np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="belongs to optimizer 'numbanet:sgd'"):
        nbp.get_optimizer("adam").load_state_dict(sgd.state_dict(layout), layout)
    with pytest.raises(ValueError, match="no entry for parameter"):
        sgd.load_state_dict(sgd.state_dict(layout), [("v", 0, 4, (4,))])
    state = sgd.state_dict(layout)
    state["slots"]["momentum_buffer"]["w"] = np.zeros(3)
    with pytest.raises(ValueError, match="expected"):
        sgd.load_state_dict(state, layout)


def test_changing_lr_and_betas_does_not_recompile():
    opt = nbp.get_optimizer("adam", lr=0.01)
    p = np.zeros(16)
    opt.step(p, np.ones(16))
    before = opt.driver.n_compiled()
    opt.lr = 0.001
    opt.set_hyperparams(betas=(0.5, 0.5), amsgrad=True)
    opt.step(p, np.ones(16))
    assert opt.driver.n_compiled() == before


def test_parallel_driver_gives_same_result_under_1_and_2_threads():
    n = SERIAL_THRESHOLD + 37  # takes the parallel path
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    results = []
    old = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            p = p0.copy()
            opt = nbp.get_optimizer("adam", lr=0.01)
            for _ in range(3):
                opt.step(p, g)
            results.append(p)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(results[0], results[1])
    # and against a NumPy reference of Adam, in float64
    m = np.zeros(n)
    v = np.zeros(n)
    q = p0.astype(np.float64)
    for t in range(1, 4):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
        q -= 0.01 / (1 - 0.9**t) * m / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(results[0], q, rtol=1e-5, atol=1e-6)


def test_serial_and_parallel_drivers_agree_below_and_above_the_threshold():
    from numbanet.kernels.updates import SERIAL_THRESHOLD

    for n in (SERIAL_THRESHOLD - 5, SERIAL_THRESHOLD + 3):
        rng = np.random.default_rng(1)
        p0 = rng.standard_normal(n)
        g = rng.standard_normal(n)
        p = p0.copy()
        opt = nbp.get_optimizer("adam", lr=0.01)
        before = numba.get_num_threads()
        opt.step(p, g)
        assert numba.get_num_threads() == before
        q = p0.copy()
        ref = nbp.get_optimizer("adam", lr=0.01)
        ref._ensure_slots(q)
        ref.driver.run_serial(q, g, 1.0, ref._slots, ref._hp_tuple, ref._prepare(1))
        np.testing.assert_allclose(p, q, rtol=1e-13, atol=1e-15)


def test_grads_sharing_memory_with_params_are_rejected():
    buf = np.zeros(8)
    with pytest.raises(ValueError, match="grads must not share memory with params"):
        nbp.get_optimizer("sgd").step(buf, buf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CONFORMANCE_LR))
def test_builtin_kernels_round_as_written_so_both_drivers_give_the_same_bits(name, dtype):
    """The built-in kernels compile with no fastmath flag (EXACT_MATH): the serial loop
    and the prange driver (2 threads) then agree bit for bit on every element, which is
    what lets the host pick the parallel driver by the thread count."""
    from numbanet.kernels.updates import EXACT_PARALLEL_MIN, compiled_exactly

    # Every optional term switched on, so that all of the kernel's arithmetic runs.
    options = {"weight_decay": 0.01}
    options.update({"sgd": {"momentum": 0.9, "nesterov": True},
                    "rmsprop": {"momentum": 0.9, "centered": True},
                    "adam": {"amsgrad": True}, "adamw": {"amsgrad": True},
                    "nadam": {"decoupled_weight_decay": True},
                    "radam": {"decoupled_weight_decay": True}}.get(name, {}))
    opt = nbp.get_optimizer(name, **options)
    assert compiled_exactly(opt.spec.kernel)
    n = EXACT_PARALLEL_MIN + 1237
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    results = []
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        for run in ("run_serial", "run_parallel"):
            o = nbp.get_optimizer(name, **options)
            p = p0.copy()
            o._ensure_slots(p)
            for step, g in enumerate(grads, start=1):
                getattr(o.driver, run)(p, g, 1.0, o._slots, o._hp_tuple, o._prepare(step))
            results.append(p)
    finally:
        numba.set_num_threads(old)
    assert results[0].tobytes() == results[1].tobytes()


def test_the_thread_count_picks_the_driver_only_for_exact_kernels(monkeypatch):
    """Between EXACT_PARALLEL_MIN and SERIAL_THRESHOLD elements: an exact kernel runs in
    parallel on 2 threads and serially on 1; a kernel with numbanet's default fastmath
    flags runs serially on any thread count (its drivers may differ in the last bit)."""
    from numbanet.jit import kernel
    from numbanet.kernels.updates import (
        EXACT_PARALLEL_MIN,
        SERIAL_THRESHOLD,
        UpdateDriver,
        compiled_exactly,
    )

    @kernel
    def fast_sgd(i, p, g, gs, slots, hp, sc):
        p[i] -= hp[0] * g[i] * gs

    assert not compiled_exactly(fast_sgd)
    n = (EXACT_PARALLEL_MIN + SERIAL_THRESHOLD) // 2
    p, g = np.zeros(n), np.ones(n)
    adam = nbp.get_optimizer("adam")
    adam._ensure_slots(p)
    cases = [(adam.driver, adam._slots, adam._hp_tuple, adam._prepare(1), True),
             (UpdateDriver(fast_sgd), (), (0.1,), (), False)]
    old = numba.get_num_threads()
    try:
        for driver, slots, hp, sc, exact in cases:
            for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                numba.set_num_threads(threads)
                ran: list[str] = []
                for which in ("parallel", "serial"):
                    monkeypatch.setattr(driver, f"run_{which}",
                                        lambda *a, which=which, ran=ran: ran.append(which))
                driver(p, g, 1.0, slots, hp, sc)
                expected = "parallel" if exact and threads > 1 else "serial"
                assert ran == [expected], (exact, threads)
                monkeypatch.undo()
    finally:
        numba.set_num_threads(old)
