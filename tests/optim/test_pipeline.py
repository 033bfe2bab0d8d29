"""The gradient pipeline: each transform against a NumPy reference, the order of the chain,
masks by role, user transforms in fit, parity with torch's clip_grad_norm_, and no
allocation per step."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

import numbanet.plugins as plugins
from numbanet.nn import Dense, Sequential
from numbanet.optim import (
    AllReduce,
    ClipByGlobalNorm,
    ClipByValue,
    DecoupledWeightDecay,
    GradientPipeline,
    GradientTransform,
    ScaleGradients,
    make_pipeline,
)


def dense_model(lr=0.1, dtype="float64", seed=0):
    model = Sequential([Dense(5, 8, activation="tanh"), Dense(8, 3)], seed=seed, dtype=dtype)
    model.compile("cross_entropy", plugins.get_optimizer("sgd", lr=lr))
    return model


def fill_gradients(model, seed=0, size=1.0):
    """Random gradients in every parameter (alignment padding stays zero)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.grad[...] = rng.normal(scale=size, size=p.shape)
    return model.flat_gradients.copy()


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)


# ---------------------------------------------------------------- each transform alone


def test_clip_by_value_matches_numpy_clip():
    model = dense_model()
    g = fill_gradients(model)
    params = model.flat_parameters.copy()
    scale = GradientPipeline(ClipByValue(0.3))(model)
    assert scale == 1.0
    np.testing.assert_array_equal(model.flat_gradients, np.clip(g, -0.3, 0.3))
    np.testing.assert_array_equal(model.flat_parameters, params)


def test_clip_by_value_clips_the_scaled_gradient_under_a_pending_scale():
    model = dense_model()
    g = fill_gradients(model)
    scale = GradientPipeline(ScaleGradients(4.0), ClipByValue(0.3))(model)
    assert scale == 4.0
    np.testing.assert_allclose(scale * model.flat_gradients, np.clip(4.0 * g, -0.3, 0.3),
                               rtol=1e-15)


def test_clip_by_global_norm_folds_the_factor_into_the_scale():
    model = dense_model()
    g = fill_gradients(model)
    norm = np.linalg.norm(g)
    clip = ClipByGlobalNorm(0.5)
    scale = GradientPipeline(clip)(model)
    assert scale == pytest.approx(0.5 / (norm + 1e-6), rel=1e-14)
    assert clip.last_norm == pytest.approx(norm, rel=1e-14)
    np.testing.assert_array_equal(model.flat_gradients, g)  # nothing written


def test_clip_by_global_norm_leaves_small_gradients_alone():
    model = dense_model()
    fill_gradients(model, size=1e-3)
    assert GradientPipeline(ClipByGlobalNorm(10.0))(model) == 1.0


def test_clip_by_global_norm_measures_the_scaled_gradient():
    model = dense_model()
    g = fill_gradients(model)
    norm = np.linalg.norm(g)
    # 0.1 * g has norm below 0.5 * norm: no clipping; 3 * g is clipped to max_norm.
    assert GradientPipeline(ScaleGradients(0.1), ClipByGlobalNorm(0.5 * norm))(model) == 0.1
    scale = GradientPipeline(ScaleGradients(3.0), ClipByGlobalNorm(0.5 * norm))(model)
    assert np.linalg.norm(scale * g) == pytest.approx(0.5 * norm, rel=1e-6)


def test_clip_norm_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    model = dense_model()
    fill_gradients(model, size=2.0)
    tensors = []
    for p in model.parameters():
        t = torch.nn.Parameter(torch.tensor(p.value.copy()))
        t.grad = torch.tensor(p.grad.copy())
        tensors.append(t)
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.5)
    clip = ClipByGlobalNorm(1.5)
    scale = GradientPipeline(clip)(model)
    assert clip.last_norm == pytest.approx(float(total), rel=1e-13)
    for p, t in zip(model.parameters(), tensors, strict=True):
        np.testing.assert_allclose(scale * p.grad, t.grad.numpy(), rtol=1e-13, atol=1e-16)


def test_decoupled_weight_decay_shrinks_weights_by_one_minus_lr_times_decay():
    model = dense_model(lr=0.1)
    g = fill_gradients(model)
    before = {p.name: p.value.copy() for p in model.parameters()}
    decay = DecoupledWeightDecay(0.5)
    assert GradientPipeline(decay)(model) == 1.0
    for p in model.parameters():
        factor = 1.0 - 0.1 * 0.5 if p.role == "weight" else 1.0
        np.testing.assert_array_equal(p.value, before[p.name] * factor)
    np.testing.assert_array_equal(model.flat_gradients, g)
    assert decay.decayed == ["0.weight", "1.weight"]


def test_weight_decay_reads_the_current_learning_rate():
    model = dense_model(lr=0.1)
    pipeline = GradientPipeline(DecoupledWeightDecay(0.5))
    w = model.layers[0].parameter("weight").value
    before = w.copy()
    model.optimizer.lr = 0.2
    pipeline(model)
    np.testing.assert_array_equal(w, before * (1.0 - 0.2 * 0.5))


def test_scale_gradients_multiplies_the_scale_and_writes_nothing():
    model = dense_model()
    g = fill_gradients(model)
    assert GradientPipeline(ScaleGradients(0.25), ScaleGradients(2.0))(model) == 0.5
    np.testing.assert_array_equal(model.flat_gradients, g)


def test_all_reduce_without_a_reducer_is_the_identity():
    model = dense_model()
    g = fill_gradients(model)
    assert GradientPipeline(AllReduce())(model) == 1.0
    np.testing.assert_array_equal(model.flat_gradients, g)


def test_all_reduce_sums_in_place_then_divides_through_the_scale():
    model = dense_model()
    g = fill_gradients(model)
    seen = []

    def three_identical_ranks(grads):
        seen.append(grads)
        grads *= 3.0  # the sum over three processes holding the same gradient

    scale = GradientPipeline(AllReduce(three_identical_ranks, divisor=3))(model)
    assert seen[0] is model.flat_gradients
    assert scale == pytest.approx(1.0 / 3.0)
    np.testing.assert_allclose(scale * model.flat_gradients, g, rtol=1e-15)


def test_all_reduce_writes_a_pending_scale_into_the_buffer_before_reducing():
    model = dense_model()
    g = fill_gradients(model)
    scale = GradientPipeline(ScaleGradients(0.5), AllReduce(lambda grads: None, 1.0))(model)
    assert scale == 1.0
    np.testing.assert_array_equal(model.flat_gradients, 0.5 * g)


# ----------------------------------------------------------------------------- order


def test_order_of_the_chain_is_the_order_given():
    norm_first = dense_model()
    value_first = dense_model()
    g = fill_gradients(norm_first)
    fill_gradients(value_first)
    max_norm = 0.5 * np.linalg.norm(g)
    clip_value = 0.2

    s1 = GradientPipeline(ClipByValue(clip_value), ClipByGlobalNorm(max_norm))(value_first)
    clipped = np.clip(g, -clip_value, clip_value)
    n1 = np.linalg.norm(clipped)
    expected1 = clipped * (max_norm / (n1 + 1e-6) if n1 > max_norm else 1.0)
    np.testing.assert_allclose(s1 * value_first.flat_gradients, expected1, rtol=1e-13)

    s2 = GradientPipeline(ClipByGlobalNorm(max_norm), ClipByValue(clip_value))(norm_first)
    expected2 = np.clip(g * (max_norm / (np.linalg.norm(g) + 1e-6)), -clip_value, clip_value)
    np.testing.assert_allclose(s2 * norm_first.flat_gradients, expected2, rtol=1e-13)
    assert not np.allclose(expected1, expected2)


def test_make_pipeline_builds_fits_documented_order():
    user = ScaleGradients(2.0)
    reduce_ = AllReduce()
    pipeline = make_pipeline(all_reduce=reduce_, transforms=[user], clip_value=1.0,
                             clip_norm=2.0, weight_decay=0.1)
    assert [type(t) for t in pipeline.transforms] == [
        AllReduce, ScaleGradients, ClipByValue, ClipByGlobalNorm, DecoupledWeightDecay]
    assert pipeline.transforms[0] is reduce_ and pipeline.transforms[1] is user
    assert len(make_pipeline()) == 0


# ------------------------------------------------------------------------------- masks


def test_parameters_carry_roles_declared_by_their_layer():
    model = dense_model()
    assert {p.name: p.role for p in model.parameters()} == {
        "0.weight": "weight", "0.bias": "bias", "1.weight": "weight", "1.bias": "bias"}


@pytest.mark.parametrize(("mask", "decayed"), [
    (None, ["0.weight", "1.weight"]),
    ({"weight", "bias"}, ["0.weight", "0.bias", "1.weight", "1.bias"]),
    ({"bias"}, ["0.bias", "1.bias"]),
    (frozenset(), []),
    (["1.weight", "0.bias"], ["0.bias", "1.weight"]),
    (lambda p: p.name.startswith("1."), ["1.weight", "1.bias"]),
])
def test_decay_mask_by_roles_names_or_predicate(mask, decayed):
    model = dense_model()
    before = model.flat_parameters.copy()
    decay = DecoupledWeightDecay(0.5, mask=mask)
    GradientPipeline(decay)(model)
    assert decay.decayed == decayed
    for p, start_stop in zip(model.parameters(), model.parameter_layout(), strict=True):
        _, start, stop, _ = start_stop
        factor = 1.0 - 0.1 * 0.5 if p.name in decayed else 1.0
        np.testing.assert_array_equal(p.value.reshape(-1), before[start:stop] * factor)


@pytest.mark.parametrize(("mask", "error", "match"), [
    ({"weights"}, ValueError, "roles"),
    ("weight", TypeError, "mask"),
    ([1, 2], TypeError, "names"),
    (3, TypeError, "mask"),
])
def test_bad_masks_are_rejected_with_the_fix(mask, error, match):
    with pytest.raises(error, match=match):
        DecoupledWeightDecay(0.1, mask=mask)


def test_mask_naming_an_unknown_parameter_fails_at_setup():
    with pytest.raises(ValueError, match=r"'2.weight'.*0.weight"):
        GradientPipeline(DecoupledWeightDecay(0.1, mask=["2.weight"])).setup(dense_model())


@pytest.mark.parametrize(("make", "error"), [
    (lambda: ClipByValue(0.0), ValueError),
    (lambda: ClipByValue(True), TypeError),
    (lambda: ClipByGlobalNorm(math.inf), ValueError),
    (lambda: ClipByGlobalNorm("1"), TypeError),
    (lambda: DecoupledWeightDecay(-1.0), ValueError),
    (lambda: ScaleGradients(0.0), ValueError),
    (lambda: AllReduce(reduce_=3), TypeError),
    (lambda: AllReduce(divisor=0), ValueError),
    (lambda: GradientPipeline(ClipByValue), TypeError),
    (lambda: GradientPipeline(object()), TypeError),
])
def test_bad_transform_arguments_raise(make, error):
    with pytest.raises(error):
        make()


# ------------------------------------------------------------------------------- in fit


class FreezeFirstLayer(GradientTransform):
    """Zero the first layer's gradients; record what it saw."""

    def setup(self, model):
        self.grads = [p.grad for p in model.parameters() if p.name.startswith("0.")]
        self.calls = 0
        self.raw_norms = []

    def update(self, grads, params, scale):
        self.calls += 1
        self.raw_norms.append(math.sqrt(float(np.dot(grads, grads))) * abs(scale))
        for g in self.grads:
            g[...] = 0.0
        return scale


def test_user_transform_runs_every_step_of_fit_before_clipping():
    X, y = data(24)
    model = dense_model()
    first = [p.value.copy() for p in model.parameters() if p.name.startswith("0.")]
    last = model.layers[1].parameter("weight").value.copy()
    freeze = FreezeFirstLayer()
    model.fit(X, y, epochs=2, batch_size=8, verbose=0, clip_norm=1e-3,
              gradient_transforms=[freeze])
    assert freeze.calls == 6
    # It saw the raw gradient (clip_norm=1e-3 comes after it) ...
    assert min(freeze.raw_norms) > 1e-3
    # ... and the first layer did not move while the second did.
    for p, before in zip([p for p in model.parameters() if p.name.startswith("0.")], first,
                         strict=True):
        np.testing.assert_array_equal(p.value, before)
    assert not np.array_equal(model.layers[1].parameter("weight").value, last)


def test_fit_keywords_and_the_equivalent_pipeline_train_identically():
    X, y = data(40)
    a, b = dense_model(dtype="float32"), dense_model(dtype="float32")
    a.fit(X, y, epochs=3, batch_size=8, verbose=0, clip_value=0.1, clip_norm=0.2,
          weight_decay=0.3, decay_biases=True)
    pipeline = make_pipeline(clip_value=0.1, clip_norm=0.2, weight_decay=0.3,
                             decay_mask={"weight", "bias"})
    b.fit(X, y, epochs=3, batch_size=8, verbose=0, gradient_pipeline=pipeline)
    assert a.flat_parameters.tobytes() == b.flat_parameters.tobytes()


def test_fit_refuses_a_pipeline_together_with_pipeline_keywords():
    X, y = data(8)
    model = dense_model()
    with pytest.raises(ValueError, match="clip_norm"):
        model.fit(X, y, verbose=0, clip_norm=1.0, gradient_pipeline=make_pipeline())
    with pytest.raises(ValueError, match="decay_biases"):
        model.fit(X, y, verbose=0, decay_biases=True, gradient_pipeline=make_pipeline())
    with pytest.raises(TypeError, match="GradientPipeline"):
        model.fit(X, y, verbose=0, gradient_pipeline=[ClipByValue(1.0)])
    with pytest.raises(TypeError, match="gradient_transforms"):
        model.fit(X, y, verbose=0, gradient_transforms=[ClipByValue])
    with pytest.raises(TypeError, match="gradient_transforms"):
        model.fit(X, y, verbose=0, gradient_transforms=ClipByValue(1.0))


def test_a_pipeline_follows_the_model_it_is_called_with():
    pipeline = GradientPipeline(DecoupledWeightDecay(0.5, mask=["1.weight"]))
    a, b = dense_model(seed=0), dense_model(seed=1)
    a_before, b_before = a.flat_parameters.copy(), b.flat_parameters.copy()
    pipeline(a)
    pipeline(b)
    assert not np.array_equal(a.flat_parameters, a_before)
    assert not np.array_equal(b.flat_parameters, b_before)
    # Each call touched its own model's 8 x 3 weight only.
    assert (a.flat_parameters != a_before).sum() == 24
    assert (b.flat_parameters != b_before).sum() == 24


def test_repr_shows_the_stages_and_their_arguments():
    text = repr(make_pipeline(clip_norm=1.0, weight_decay=0.01))
    assert text.startswith("GradientPipeline(ClipByGlobalNorm(max_norm=1.0), "
                           "DecoupledWeightDecay(weight_decay=0.01")


# ---------------------------------------------------------------------------- memory


def test_a_pipeline_step_allocates_nothing():
    # Large enough that any temporary the size of the gradient (16 KB) would show.
    model = Sequential([Dense(64, 48, activation="relu"), Dense(48, 10)], seed=0)
    model.compile("cross_entropy", plugins.get_optimizer("adam", lr=1e-3))
    fill_gradients(model, size=10.0)
    pipeline = GradientPipeline(AllReduce(), ScaleGradients(0.5), ClipByValue(3.0),
                                ClipByGlobalNorm(1.0), DecoupledWeightDecay(1e-4))
    assert model.flat_gradients.nbytes > 12_000
    for _ in range(3000):  # compile, and fill CPython's free lists
        pipeline(model)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(200):
            pipeline(model)
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < 2048
    assert now - before < 512
