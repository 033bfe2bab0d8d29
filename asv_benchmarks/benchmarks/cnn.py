"""Convolutional networks (issue 13): a training step of the CNNs of ``numbanet bench``,
and BatchNorm / LayerNorm alone.

* ``CNNTrainStepSuite``: ``model.train_step`` of LeNet-5 (28x28x1) and of the small
  residual CNN with BatchNorm (32x32x3), batch 64, float32, softmax cross-entropy, Adam;
  the very step ``numbanet bench --models lenet5@64,resnet-small@64`` times (built by
  :func:`numbanet.bench.make_step`, so the weights and batch are the same).
* ``NormSuite``: one training step of a normalisation layer alone, forward (training
  mode) then backward with the input gradient, on ``(256, 1024)`` and channels-last
  images ``(64, 16, 16, 64)`` (the shapes of ``asv_benchmarks/compare_norm.py``, which
  compares them with PyTorch).

Thread counts 1 and 2 (where the machine has 2), as in the issue's tables.
"""

from __future__ import annotations

from numbanet.threads import max_threads

from .common import SMOKE, random_array, set_threads

#: The CNNs at the issue's batch; the smoke check runs the residual CNN at a small batch.
CNN_MODELS = ["lenet5@64", "resnet-small@16"] if SMOKE else ["lenet5@64", "resnet-small@64"]
#: 1 and 2 threads, as in the issue.
CNN_THREADS = [1] if SMOKE else [t for t in (1, 2) if t <= max_threads()]
#: Normalisation layers and input shapes (a string each, so asv's names stay readable).
NORM_LAYERS = ["BatchNorm", "LayerNorm"]
NORM_SHAPES = ["256x1024", "64x16x16x64"]
#: Forward + backward calls per timed sample of NormSuite (one pair is 0.1-2 ms).
INNER_NORM = 10

# asv re-runs setup() before every sample; steps are built once per process and reused.
_STEPS: dict[str, object] = {}


class CNNTrainStepSuite:
    """``model.train_step(X, y)`` of a CNN: forward, loss, backward and one Adam update."""

    params = (CNN_MODELS, CNN_THREADS)
    param_names = ["model", "threads"]
    timeout = 600

    def setup(self, model: str, threads: int) -> None:
        from numbanet.bench import make_step

        set_threads(threads)
        if model not in _STEPS:
            _STEPS[model] = make_step("numbanet", model)
        self.step = _STEPS[model]
        self.step()

    def time_train_step(self, model: str, threads: int) -> None:
        self.step()


class NormSuite:
    """``layer.forward(x, training=True)`` then ``layer.backward(dy)`` (input gradient
    and both parameter gradients), ``INNER_NORM`` times, float32."""

    params = (NORM_LAYERS, NORM_SHAPES, CNN_THREADS)
    param_names = ["layer", "shape", "threads"]
    timeout = 300

    def setup(self, layer: str, shape: str, threads: int) -> None:
        import numbanet as nbn

        set_threads(threads)
        dims = tuple(int(d) for d in shape.split("x"))
        model = nbn.Sequential([getattr(nbn, layer)(dims[-1])], input_shape=dims[1:],
                               seed=0, dtype="float32")
        self.layer = model.layers[0]
        self.x = random_array(dims, "float32", seed=1)
        self.dy = random_array(dims, "float32", seed=2)
        self.time_forward_backward(layer, shape, threads)

    def time_forward_backward(self, layer: str, shape: str, threads: int) -> None:
        for _ in range(INNER_NORM):
            self.layer.forward(self.x, True)
            self.layer.backward(self.dy, need_input_grad=True)
