"""Optimizers and the gradient pipeline.

:class:`Optimizer` is the host object that runs an :class:`~numbanet.OptimizerSpec`; get
one with :func:`numbanet.get_optimizer`. The update rules live in
:mod:`numbanet._builtin` (one module per optimizer) and in plugins.

The gradient pipeline (:mod:`numbanet.optim.pipeline`) is the ordered chain of
transforms between backward and the optimizer update: all-reduce, clipping, weight decay,
gradient scaling, and your own stages.
"""

from numbanet.optim.optimizer import Optimizer
from numbanet.optim.pipeline import (
    AllReduce,
    ClipByGlobalNorm,
    ClipByValue,
    DecoupledWeightDecay,
    GradientPipeline,
    GradientTransform,
    PipelineTarget,
    ScaleGradients,
    make_pipeline,
)

__all__ = [
    "AllReduce",
    "ClipByGlobalNorm",
    "ClipByValue",
    "DecoupledWeightDecay",
    "GradientPipeline",
    "GradientTransform",
    "Optimizer",
    "PipelineTarget",
    "ScaleGradients",
    "make_pipeline",
]
