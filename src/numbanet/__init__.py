"""numbanet: train neural networks on every core of your CPU.

The public API is re-exported here; implementation modules are private or live in
sub-packages (:mod:`numbanet.kernels`, :mod:`numbanet.nn`, ...).

Example:
    >>> import numbanet as nbn
    >>> model = nbn.Sequential([nbn.Dense(64, 32, activation="relu"), nbn.Dense(32, 10)], seed=0)
    >>> _ = model.compile(loss="cross_entropy", optimizer=nbn.get_optimizer("sgd", lr=0.1))
"""

from __future__ import annotations

from typing import Any

from numbanet import datasets, jit, kernels, metrics, plugins, schedules, testing
from numbanet.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from numbanet.hookspecs import hookimpl
from numbanet.io import load, save
from numbanet.nn import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool2D,
    LayerNorm,
    MaxPool2D,
    Module,
    Parameter,
    Residual,
    Sequential,
)
from numbanet.optim import (
    AllReduce,
    ClipByGlobalNorm,
    ClipByValue,
    DecoupledWeightDecay,
    GradientPipeline,
    GradientTransform,
    ScaleGradients,
)
from numbanet.plugins import (
    PluginWarning,
    get_layer_class,
    get_loss,
    get_optimizer,
    list_layers,
    list_losses,
    list_optimizers,
)
from numbanet.sampling import BatchSampler
from numbanet.specs import LossSpec, OptimizerSpec
from numbanet.tensorboard import TensorBoard
from numbanet.threads import get_num_threads, set_num_threads, threading_layer
from numbanet.train import History, StopReason

__version__ = "0.1.0"

__all__ = [
    "AllReduce",
    "BatchSampler",
    "ClipByGlobalNorm",
    "ClipByValue",
    "DecoupledWeightDecay",
    "GradientPipeline",
    "GradientTransform",
    "ScaleGradients",
    "StopReason",
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "History",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TensorBoard",
    "TerminateOnNaN",
    "Activation",
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "GlobalAvgPool2D",
    "LayerNorm",
    "MaxPool2D",
    "Residual",
    "LossSpec",
    "Module",
    "OptimizerSpec",
    "PluginWarning",
    "Parameter",
    "Sequential",
    "__version__",
    "datasets",
    "get_loss",
    "get_num_threads",
    "get_layer_class",
    "get_optimizer",
    "hookimpl",
    "jit",
    "kernels",
    "list_layers",
    "list_losses",
    "list_optimizers",
    "load",
    "metrics",
    "plugins",
    "save",
    "schedules",
    "set_num_threads",
    "testing",
    "threading_layer",
]


def __getattr__(name: str) -> Any:
    # numbanet.sklearn and numbanet.onnx import scikit-learn / onnx, optional extras:
    # they load on first use, never with numbanet itself (and stay out of __all__, so
    # `from numbanet import *` does not load them either).
    if name in ("sklearn", "onnx"):
        import importlib

        return importlib.import_module(f"numbanet.{name}")
    raise AttributeError(f"module 'numbanet' has no attribute {name!r}")
