"""Learning-rate schedules against closed forms and PyTorch's schedulers."""

from __future__ import annotations

import math

import pytest

from numbanet import schedules


def torch_lrs(torch, make_scheduler, steps, lr):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step_and_exponential_decay_closed_forms():
    step = schedules.step_decay(0.2, step_size=3, gamma=0.1)
    assert [step(t) for t in range(7)] == pytest.approx([0.2] * 3 + [0.02] * 3 + [0.002])
    exp = schedules.exponential_decay(0.5, gamma=0.9)
    assert exp(0) == 0.5 and exp(4) == pytest.approx(0.5 * 0.9**4, rel=1e-15)


def test_cosine_with_warmup_closed_form():
    s = schedules.cosine_decay(0.1, total=20, warmup=4, min_lr=0.01)
    assert [s(t) for t in range(5)] == pytest.approx([0.025, 0.04375, 0.0625, 0.08125, 0.1])
    mid = 4 + 8
    assert s(mid) == pytest.approx(0.01 + 0.09 * 0.5)
    assert s(20) == 0.01 and s(500) == 0.01
    assert schedules.cosine_decay(0.1, total=10, warmup=2, warmup_start=0.0)(0) == 0.0


@pytest.mark.parametrize(("ours", "theirs", "steps"), [
    (lambda: schedules.step_decay(0.1, step_size=4, gamma=0.5),
     lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5), 12),
    (lambda: schedules.exponential_decay(0.1, gamma=0.8),
     lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, gamma=0.8), 12),
    (lambda: schedules.cosine_decay(0.1, total=15, min_lr=0.001),
     lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=15, eta_min=0.001), 16),
    (lambda: schedules.one_cycle(0.1, total=30),
     lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=30,
                                                  cycle_momentum=False), 30),
    (lambda: schedules.one_cycle(0.05, total=17, pct_start=0.4, div_factor=10,
                                 final_div_factor=100),
     lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=17,
                                                  pct_start=0.4, div_factor=10,
                                                  final_div_factor=100,
                                                  cycle_momentum=False), 17),
])
def test_schedules_match_torch(ours, theirs, steps):
    torch = pytest.importorskip("torch")
    schedule = ours()
    expected = torch_lrs(torch, lambda o: theirs(torch, o), steps, lr=schedule(0))
    assert [schedule(t) for t in range(steps)] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_one_cycle_shape():
    s = schedules.one_cycle(1.0, total=100, pct_start=0.25)
    values = [s(t) for t in range(100)]
    peak = max(range(100), key=values.__getitem__)
    assert values[0] == pytest.approx(1 / 25) and values[peak] == pytest.approx(1.0)
    assert peak == 24 and values[-1] == pytest.approx(1 / 25 / 1e4)
    assert s(1000) == values[-1]


@pytest.mark.parametrize(("make", "error"), [
    (lambda: schedules.step_decay(0.1, step_size=0), ValueError),
    (lambda: schedules.step_decay(-0.1, step_size=2), ValueError),
    (lambda: schedules.exponential_decay(0.1, gamma="x"), TypeError),
    (lambda: schedules.cosine_decay(0.1, total=5, warmup=5), ValueError),
    (lambda: schedules.cosine_decay(0.1, total=5, min_lr=0.2), ValueError),
    (lambda: schedules.cosine_decay(0.1, total=2.5), TypeError),
    (lambda: schedules.one_cycle(0.1, total=10, pct_start=1.0), ValueError),
    (lambda: schedules.one_cycle(math.inf, total=10), ValueError),
])
def test_bad_arguments(make, error):
    with pytest.raises(error):
        make()


def test_bad_t():
    s = schedules.exponential_decay(0.1, gamma=0.5)
    with pytest.raises(ValueError, match="t must be >= 0"):
        s(-1)
    with pytest.raises(TypeError, match="t must be an int"):
        s(1.5)
