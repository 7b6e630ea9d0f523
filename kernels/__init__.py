"""Numba kernels behind onnxfix: convolution/pooling/FC backtracking and fixation density maps."""

from .components import label_components
from .conv import conv_backtrack
from .density import gaussian_blur, neighbour_counts, splat
from .fc import fc_positive
from .pool import pool_argmax, window_positive

__all__ = [
    "conv_backtrack",
    "pool_argmax",
    "window_positive",
    "fc_positive",
    "splat",
    "gaussian_blur",
    "neighbour_counts",
    "label_components",
]
