"""numbanet.sklearn: scikit-learn's own estimator checks, plus what they do not cover
(labels of any type, sample weights as repeated rows, partial_fit, pandas, pickling
without code objects, grid search in worker processes)."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import numbanet as nbn  # noqa: E402
from numbanet.sklearn import (  # noqa: E402
    EXPECTED_FAILED_CHECKS,
    L2Penalty,
    NumbanetClassifier,
    NumbanetRegressor,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks([NumbanetClassifier(), NumbanetRegressor()],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_expected_failed_checks_each_have_a_reason():
    assert all(isinstance(k, str) and isinstance(v, str) and v
               for k, v in EXPECTED_FAILED_CHECKS.items())


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


# ----------------------------------------------------------------------- classification


@pytest.mark.parametrize("labels", [
    np.array(["cat", "dog", "emu"]),
    np.array([-7, 3, 40]),
    np.array([1.0, 3.0, 8.0]),
])
def test_classifier_takes_any_label_type(labels):
    X, y = make_classification(120, n_features=6, n_informative=4, n_classes=3,
                               random_state=0)
    y = labels[y]
    clf = NumbanetClassifier((16,), learning_rate_init=0.01, max_iter=100,
                             random_state=0).fit(X, y)
    assert clf.classes_.tolist() == sorted(labels.tolist())
    assert set(clf.predict(X)) <= set(labels)
    assert clf.predict(X).dtype == y.dtype
    assert clf.score(X, y) > 0.7


def test_binary_classifier_has_one_logistic_output():
    X, y = make_classification(100, n_features=5, random_state=0)
    y = np.where(y == 1, "yes", "no")
    clf = NumbanetClassifier((8,), max_iter=50, random_state=0).fit(X, y)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    proba, decision = clf.predict_proba(X), clf.decision_function(X)
    assert proba.shape == (100, 2) and decision.shape == (100,)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-decision)), rtol=1e-12)
    assert (clf.predict(X) == clf.classes_[(decision > 0).astype(int)]).all()


def test_multiclass_proba_is_softmax_of_decision_function(digits):
    X, y = digits
    clf = NumbanetClassifier((32,), max_iter=40, random_state=0).fit(X, y)
    z = clf.decision_function(X[:50])
    p = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(X[:50]), p / p.sum(axis=1, keepdims=True),
                               rtol=1e-12)
    # The probabilities are also what the model's own predict_proba gives.
    np.testing.assert_allclose(clf.predict_proba(X[:50]), clf.model_.predict_proba(X[:50]),
                               rtol=1e-12)
    assert clf.score(X, y) > 0.9


def test_multilabel_targets():
    X, y = make_classification(150, n_features=6, random_state=0)
    Y = np.c_[y, 1 - y, (X[:, 0] > 0).astype(int)]
    clf = NumbanetClassifier((16,), max_iter=100, random_state=0).fit(X, Y)
    assert clf.predict(X).shape == (150, 3) and clf.predict_proba(X).shape == (150, 3)
    assert set(np.unique(clf.predict(X))) <= {0, 1}


def test_one_class_is_refused_with_a_message_naming_classes():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="only one class"):
        NumbanetClassifier().fit(X, np.ones(10))
    with pytest.raises(ValueError, match="class"):
        NumbanetClassifier().fit(X, np.arange(10) % 2, sample_weight=np.arange(10) % 2)


# ---------------------------------------------------------------------- sample weights


@pytest.mark.parametrize("alpha", [1e-4, 0.5])
@pytest.mark.parametrize("make", [
    lambda alpha: NumbanetClassifier((8,), alpha=alpha, max_iter=40, random_state=0),
    lambda alpha: NumbanetRegressor((8,), alpha=alpha, max_iter=40, random_state=0),
    lambda alpha: NumbanetRegressor((8,), alpha=alpha, max_iter=40, random_state=0,
                                    loss="huber"),
])
def test_integer_weights_equal_repeated_rows(make, alpha):
    """Full batches: the weighted mean and alpha's divisor (the batch's total weight)
    both equal those of the repeated rows."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    if isinstance(make(alpha), NumbanetRegressor):
        y = np.c_[X[:, 0] - X[:, 2], X[:, 1]]
    sw = rng.integers(0, 4, size=30)
    weighted = make(alpha).fit(X, y, sample_weight=sw)
    repeated = make(alpha).fit(X.repeat(sw, axis=0), y.repeat(sw, axis=0))
    np.testing.assert_allclose(weighted.predict(X), repeated.predict(X), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-9)


def test_equal_weights_take_the_unweighted_path():
    X, y = make_classification(80, n_features=5, random_state=0)
    plain = NumbanetClassifier((8,), max_iter=20, random_state=0).fit(X, y)
    ones = NumbanetClassifier((8,), max_iter=20, random_state=0).fit(X, y, np.ones(80))
    np.testing.assert_array_equal(plain.decision_function(X), ones.decision_function(X))


def test_weighted_minibatches_divide_alpha_by_each_batch_weight(monkeypatch):
    from numbanet import sklearn as nbn_sklearn

    divisors = []
    update = nbn_sklearn.L2Penalty.update

    def recording(self, grads, params, scale):
        divisors.append(self.divisor)
        return update(self, grads, params, scale)

    monkeypatch.setattr(nbn_sklearn.L2Penalty, "update", recording)
    X, y = make_classification(40, n_features=4, random_state=0)
    sw = np.arange(40) % 3
    clf = NumbanetClassifier((4,), batch_size=10, max_iter=2, shuffle=False, random_state=0)
    clf.fit(X, y, sample_weight=sw)
    expected = [sw[i:i + 10].sum() for i in range(0, 40, 10)]
    assert divisors == expected * 2
    assert clf.model_.loss.name == "binary_cross_entropy"  # the plain loss again after fit


def test_l2_penalty_touches_weights_not_biases():
    model = nbn.Sequential([nbn.Dense(3, 4), nbn.Dense(4, 2)], seed=0, dtype="float64")
    model.compile("mse", "sgd")
    penalty = L2Penalty(0.5)
    penalty.setup(model)
    penalty.divisor = 4.0
    model.flat_gradients[...] = 0
    penalty.update(model.flat_gradients, model.flat_parameters, 1.0)
    for p in model.parameters():
        expected = 0.5 * p.value / 4.0 if p.role == "weight" else 0.0
        np.testing.assert_allclose(p.grad, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_l2_penalty_step_is_numpys_multiply_then_add_bit_for_bit(dtype):
    model = nbn.Sequential([nbn.Dense(5, 7, activation="relu"), nbn.BatchNorm(7),
                            nbn.Dense(7, 3)], seed=0, dtype=dtype)
    model.compile("mse", "sgd")
    rng = np.random.default_rng(0)
    model.flat_parameters[...] = 3 * rng.standard_normal(model.flat_parameters.shape)
    start = rng.standard_normal(model.flat_gradients.shape).astype(dtype)
    penalty = L2Penalty(0.37)
    penalty.setup(model)
    assert penalty._flat is not None  # the one-kernel path
    penalty.divisor = 3.0
    model.flat_gradients[...] = start
    for scale in (1.0, 0.123, -2.5):
        penalty.update(model.flat_gradients, model.flat_parameters, scale)
    # The NumPy code the kernel replaced: the Python float factor is cast to the dtype,
    # each product rounded to it, then added (no fused multiply-add).
    expected = start.copy()
    roles = {p.name: p.role for p in model.parameters()}
    for name, lo, hi, _shape in model.parameter_layout():
        if roles[name] == "weight":
            for scale in (1.0, 0.123, -2.5):
                expected[lo:hi] += np.multiply(model.flat_parameters[lo:hi],
                                               0.37 / (3.0 * scale))
    assert model.flat_gradients.tobytes() == expected.tobytes()


class _Unflattened:
    """A pipeline target whose parameters are not views into its flat buffers."""

    def __init__(self):
        from numbanet.nn.parameter import Parameter

        self.flat_parameters = np.zeros(6)
        self.flat_gradients = np.zeros(6)
        self.params = [Parameter("w", np.arange(6.0).reshape(2, 3), np.ones((2, 3))),
                       Parameter("b", np.ones(3), np.zeros(3), role="bias")]

    def parameters(self):
        return self.params


def test_l2_penalty_on_parameters_outside_the_flat_buffers_uses_numpy():
    target = _Unflattened()
    penalty = L2Penalty(0.5)
    penalty.setup(target)
    assert penalty._flat is None
    penalty.divisor = 2.0
    penalty.update(target.flat_gradients, target.flat_parameters, 1.0)
    weight, bias = target.params
    np.testing.assert_array_equal(weight.grad, 1.0 + 0.25 * weight.value)
    np.testing.assert_array_equal(bias.grad, 0.0)
    assert not target.flat_gradients.any()
    assert penalty.value(2.0) == 0.5 * 0.5 * float(np.sum(weight.value ** 2)) / 2.0


# ------------------------------------------------------------------- incremental, warm


def test_partial_fit_needs_classes_first_and_accepts_batches(digits):
    X, y = digits
    clf = NumbanetClassifier((32,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X[:100], y[:100])
    classes = np.arange(10)
    for start in range(0, 1000, 100):
        clf.partial_fit(X[start:start + 100], y[start:start + 100], classes=classes)
    assert clf.classes_.tolist() == classes.tolist() and clf.n_iter_ == 10
    assert clf.t_ == 1000
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X[:5], np.array([0, 1, 2, 3, 11]))
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:5, :10], y[:5])


def test_warm_start_continues_training(digits):
    X, y = digits
    clf = NumbanetClassifier((16,), max_iter=3, warm_start=True, random_state=0).fit(X, y)
    before = clf.model_.flat_parameters.copy()
    steps = clf.model_.optimizer.step_count
    clf.fit(X, y)
    assert clf.model_.optimizer.step_count == 2 * steps
    assert not np.array_equal(before, clf.model_.flat_parameters)
    cold = clone(clf).set_params(warm_start=False).fit(X, y)
    assert cold.model_.optimizer.step_count == steps


def test_early_stopping_keeps_the_best_validation_weights(digits):
    X, y = digits
    clf = NumbanetClassifier((32,), early_stopping=True, max_iter=200, n_iter_no_change=3,
                             random_state=0).fit(X, y)
    assert clf.n_iter_ < 200
    assert clf.best_validation_score_ == max(clf.validation_scores_) > 0.9


def test_stopping_on_tol_and_convergence_warning():
    X, y = make_classification(60, n_features=4, random_state=0)
    with pytest.warns(ConvergenceWarning, match="maximum iterations"):
        NumbanetClassifier((4,), max_iter=2, random_state=0).fit(X, y)
    clf = NumbanetClassifier((4,), max_iter=500, tol=10.0, n_iter_no_change=2,
                             random_state=0).fit(X, y)
    # The first epoch improves on inf; stop once n_iter_no_change is exceeded.
    assert clf.n_iter_ == 1 + 2 + 1


# -------------------------------------------------------------------------- regression


def test_regressor_single_and_multi_output():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0])
    reg = NumbanetRegressor((32,), max_iter=300, random_state=0).fit(X, y)
    assert reg.predict(X).shape == (300,) and reg.score(X, y) > 0.95
    Y = np.c_[y, np.sin(X[:, 0]), X[:, 1] ** 2]
    reg = NumbanetRegressor((64,), max_iter=300, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (300, 3) and reg.n_outputs_ == 3
    assert reg.score(X, Y) > 0.8


def test_regressor_takes_any_regression_loss():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3))
    y = X[:, 0] + 0.1 * rng.normal(size=100)
    # One batch per epoch: 100 steps. At the default rate 1e-3 neither this nor
    # MLPRegressor (R^2 -1.6 to 0.4 over seeds 0-2) gets far from its start.
    for loss in ("mae", "huber", "smooth_l1"):
        assert NumbanetRegressor((8,), loss=loss, max_iter=100, learning_rate_init=1e-2,
                                 random_state=0).fit(X, y).score(X, y) > 0.5


# --------------------------------------------------------------- parameters and layers


def test_layers_factory_builds_any_architecture(digits):
    X, y = digits

    def layers(n_features, n_outputs):
        return [nbn.Dense(n_features, 32, activation="gelu"), nbn.Dropout(0.1),
                nbn.Dense(32, 32), nbn.Activation("tanh"), nbn.Dense(32, n_outputs)]

    clf = NumbanetClassifier(layers=layers, max_iter=20, random_state=0).fit(X, y)
    assert [type(m).__name__ for m in clf.model_.layers] == [
        "Dense", "Dropout", "Dense", "Activation", "Dense"]
    assert clf.score(X, y) > 0.9
    bad = NumbanetClassifier(layers=lambda n, k: [nbn.Dense(n, k + 1)])
    with pytest.raises(ValueError, match="expected \\(10,\\)"):
        bad.fit(X, y)


@pytest.mark.parametrize(("param", "value", "error", "match"), [
    ("max_iter", 0, ValueError, "max_iter must be >= 1"),
    ("alpha", "0.1", TypeError, "alpha must be"),
    ("activation", "rleu", ValueError, "did you mean 'relu'"),
    ("batch_size", "big", ValueError, "batch_size"),
    ("hidden_layer_sizes", (10, 0), ValueError, "hidden_layer_sizes\\[1\\] must be >= 1"),
    ("dtype", "float16", TypeError, "'float32' or 'float64'"),
    ("optimizer", "adamm", ValueError, "adamm"),
])
def test_bad_parameters_are_named_at_fit(param, value, error, match):
    X, y = make_classification(20, n_features=3, n_informative=2, n_redundant=0,
                               random_state=0)
    clf = NumbanetClassifier(**{param: value})  # __init__ never validates
    with pytest.raises(error, match=match):
        clf.fit(X, y)


def test_mlp_activation_names_and_optimizer_params():
    X, y = make_classification(60, n_features=4, random_state=0)
    clf = NumbanetClassifier((4,), activation="logistic", optimizer="sgd",
                             optimizer_params={"momentum": 0.9}, learning_rate_init=0.05,
                             max_iter=5, random_state=0).fit(X, y)
    assert clf.model_.layers[0].activation == "sigmoid"
    assert clf.model_.optimizer.hyperparams["momentum"] == 0.9
    assert clf.optimizer_params == {"momentum": 0.9}  # never modified


def test_float32_models_train_and_predict_float32(digits):
    X, y = digits
    clf = NumbanetClassifier((32,), dtype="float32", max_iter=40, random_state=0).fit(X, y)
    assert clf.model_.dtype == np.float32 and clf.predict_proba(X).dtype == np.float32
    assert clf.score(X, y) > 0.9


def test_n_threads_is_restored_after_fit():
    X, y = make_classification(50, n_features=4, random_state=0)
    before = nbn.get_num_threads()
    NumbanetClassifier((4,), n_threads=1, max_iter=2, random_state=0).fit(X, y)
    assert nbn.get_num_threads() == before


# ------------------------------------------------------------------- ecosystem pieces


def test_dataframes_feature_names_and_set_output():
    pd = pytest.importorskip("pandas")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(80, n_features=4, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    pipe = make_pipeline(StandardScaler(), NumbanetClassifier((8,), max_iter=10,
                                                              random_state=0))
    pipe.set_output(transform="pandas").fit(frame, pd.Series(y))
    clf = pipe[-1]
    assert clf.feature_names_in_.tolist() == ["a", "b", "c", "d"] and clf.n_features_in_ == 4
    assert pipe.predict(frame).shape == (80,)
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)


def test_clone_and_params_round_trip():
    clf = NumbanetClassifier((8, 4), alpha=0.01, optimizer="sgd", dropout=0.2, n_threads=1)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and twin is not clf
    twin.set_params(hidden_layer_sizes=(3,))
    assert clf.hidden_layer_sizes == (8, 4)


def _pickled_globals(data: bytes) -> set[str]:
    """Every ``module.name`` unpickling ``data`` looks up."""
    found = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add(f"{module}.{name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return found


@pytest.mark.parametrize("make", [
    lambda: NumbanetClassifier((8,), max_iter=5, random_state=0, optimizer="adam"),
    lambda: NumbanetRegressor((8,), max_iter=5, random_state=0, loss="huber"),
])
def test_pickle_round_trip_holds_arrays_not_code(make):
    X, y = make_classification(60, n_features=4, random_state=0)
    est = make()
    if isinstance(est, NumbanetRegressor):
        y = y.astype(float)
    est.fit(X, y)
    data = pickle.dumps(est)
    modules = {name.rsplit(".", 1)[0] for name in _pickled_globals(data)}
    assert all(m.split(".")[0] in ("builtins", "numpy", "copyreg", "_codecs", "numbanet")
               for m in modules), modules
    twin = pickle.loads(data)
    np.testing.assert_array_equal(twin.predict(X), est.predict(X))
    # The optimizer state and the random generator came along: training continues
    # bit for bit.
    est.partial_fit(X, y)
    twin.partial_fit(X, y)
    np.testing.assert_array_equal(twin.model_.flat_parameters, est.model_.flat_parameters)


def test_grid_search_in_two_worker_processes():
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(120, n_features=6, random_state=0)
    # 20 steps of one batch: at the default rate 1e-3 MLPClassifier scores 0.44-0.51
    # here, as numbanet does from the same start; 1e-2 trains.
    search = GridSearchCV(NumbanetClassifier(max_iter=20, learning_rate_init=1e-2,
                                             random_state=0, n_threads=1),
                          {"hidden_layer_sizes": [(8,), (16,)], "alpha": [1e-4, 1e-2]},
                          cv=2, n_jobs=2)
    search.fit(X, y)
    assert set(search.cv_results_["mean_test_score"]) and search.best_score_ > 0.7
    assert isinstance(search.best_estimator_.model_, nbn.Sequential)


def test_without_scikit_learn_the_error_names_the_extra():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import numbanet.sklearn\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 'pip install "numbanet[sklearn]"' in out


def test_importing_numbanet_does_not_import_sklearn():
    code = ("import sys, numbanet; print('sklearn' in sys.modules, "
            "'numbanet.sklearn' in sys.modules); from numbanet import sklearn as s; "
            "print(s.NumbanetClassifier.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False", "NumbanetClassifier"]


def test_warnings_are_not_raised_by_a_converged_fit():
    X, y = make_classification(60, n_features=4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NumbanetClassifier((4,), max_iter=500, tol=1.0, random_state=0).fit(X, y)


@pytest.mark.parametrize("activation, factor", [("relu", 6.0), ("logistic", 2.0)])
def test_mlp_starts_in_mlpclassifiers_range(activation, factor):
    """Weights and biases of every layer uniform in +-sqrt(factor / (fan_in + fan_out)),
    scikit-learn's ``_init_coef``; checked on the model before any step."""
    est = NumbanetClassifier((40, 30), activation=activation, max_iter=1, random_state=0)
    params = est._checked_params()
    model = est._build_model(params, 50, 4, "cross_entropy", seed=0)
    for layer in model.layers:
        bound = np.sqrt(factor / (layer.in_features + layer.out_features))
        for values in (layer.weight.value, layer.bias.value):
            assert np.abs(values).max() <= bound
            # a uniform draw of this size spans most of the range, biases included
            assert np.abs(values).max() > 0.8 * bound
        assert np.std(layer.weight.value) == pytest.approx(bound / np.sqrt(3), rel=0.1)


def test_a_layers_factory_keeps_numbanets_own_initialization():
    est = NumbanetClassifier(layers=lambda n_in, n_out: [nbn.Dense(n_in, 8, "relu"),
                                                         nbn.Dense(8, n_out)],
                             max_iter=1, random_state=0)
    model = est._build_model(est._checked_params(), 5, 3, "cross_entropy", seed=0)
    assert not model.layers[0].bias.value.any()  # zero biases: numbanet's start
