"""Layers and the Sequential model."""

from numbanet.nn.layers import Activation, Dense, Dropout
from numbanet.nn.module import Module
from numbanet.nn.parameter import Parameter
from numbanet.nn.sequential import Sequential

__all__ = ["Activation", "Dense", "Dropout", "Module", "Parameter", "Sequential"]
