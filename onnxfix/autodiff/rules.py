"""All VJP rules, one module per op family, and the built-in override tables (DESIGN §3).

Importing this module fills :data:`~onnxfix.autodiff.registry.VJP_RULES` and the mode tables. The rule files:

* rules_shape.py — identity-like ops, reshapes, transposes, Concat/Split, Slice/Pad/Gather, Expand, Tile,
  DepthToSpace/SpaceToDepth, Resize;
* rules_elementwise.py — broadcasting arithmetic, activations, Where, Max/Min, Abs, Pow, Erf, Gelu…;
* rules_reduce.py — reductions, global pools, Softmax/LogSoftmax;
* rules_linear.py — Gemm, MatMul, Einsum;
* rules_conv.py — Conv, ConvTranspose, MaxPool, AveragePool;
* rules_norm.py — BatchNormalization, InstanceNormalization, LayerNormalization;
* rules_resize.py — Resize;
* rules_recurrent.py — LSTM/GRU/RNN (lowered first, lowering.py);
* modes.py — the guided, deconvnet and strided-nearest override tables.

The names below are re-exported for callers of the single-file engine.
"""

from __future__ import annotations

from onnxfix.autodiff import (  # noqa: F401 - each import files its rules
    rules_conv,
    rules_elementwise,
    rules_linear,
    rules_norm,
    rules_recurrent,
    rules_reduce,
    rules_resize,
    rules_shape,
)
from onnxfix.autodiff.modes import nearest_resample, strided_nearest  # noqa: F401 - re-exported
from onnxfix.autodiff.rules_conv import (  # noqa: F401 - re-exported
    conv,
    conv_flipped_back,
    conv_pointwise_back,
    conv_transpose_back,
    conv_zero_insert_back,
    flipped_kernel,
)
