"""One table of what onnxfix knows about each ONNX op, read by every module that needs op knowledge.

Before this table the same facts lived in seven places (graph normalisation, the fixations pass-through list,
occlusion's local recomputation, relevant-filter patches, layer discovery, CAM's head search, the shape-only ops).
Now each consumer asks :func:`info` or one of the named sets below, which are derived from :data:`OPS`.

Fields of :class:`OpInfo`:

* ``unary`` — element-wise on one data input (the output element depends on the same input element only): the
  fixations tracer passes locations through, occlusion's cone of influence does not grow, a feature map stays one;
* ``binary`` — element-wise with broadcasting over several data inputs (Add, Mul, Max…);
* ``windowed`` — a sliding window over the spatial axes (Conv, pools): kernel, strides, pads, dilations define its
  receptive field (``graph.window_span``);
* ``view`` — moves or reshapes elements without computing (Reshape, Flatten, Squeeze…);
* ``mixes`` — every output element may read every input element (a global pool, a fully connected layer, Resize as
  seen by a local recomputation);
* ``shape_only`` — reads only its input's shape (Shape, Size): no data path goes through it;
* ``discrete`` — its output is an index chosen by the input's values (ArgMax): piecewise constant, no location;
* ``feature_source`` — produces an NCHW feature map from an NCHW input (Conv, pools, BatchNormalization);
* ``quantised`` — integer arithmetic (ConvInteger, QLinearConv…): no gradient; only gradient-free methods apply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpInfo:
    unary: bool = False
    binary: bool = False
    windowed: bool = False
    view: bool = False
    mixes: bool = False
    shape_only: bool = False
    discrete: bool = False
    feature_source: bool = False
    quantised: bool = False


_UNARY = ("Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "BatchNormalization",
          "Dropout", "Identity", "Cast", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Abs", "Neg",
          "Exp", "Log", "Sqrt", "Mish", "ThresholdedRelu", "InstanceNormalization", "Reciprocal", "Floor", "Ceil",
          "Round", "Sign", "Sin", "Cos",
          "FastGelu", "BiasGelu", "QuickGelu")  # com.microsoft GELUs (a constant bias at most): onnxfix/canonize_ms.py
_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean")
_WINDOWED = ("Conv", "MaxPool", "AveragePool", "LpPool")
_VIEW = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout")
_MIXES = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Reshape", "Flatten", "Gemm", "MatMul", "Resize",
          "Upsample", "ConvTranspose", "ReduceMean", "ReduceMax", "ReduceSum", "Squeeze", "Unsqueeze", "Slice",
          "Gather", "Split", "LSTM", "GRU", "RNN", "SpaceToDepth", "DepthToSpace", "Expand", "Tile",
          "Attention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")

OPS: dict[str, OpInfo] = {}


def _set(names, **flags) -> None:
    for n in names:
        cur = OPS.get(n, OpInfo())
        OPS[n] = OpInfo(**{**cur.__dict__, **flags})


_set(_UNARY, unary=True)
_set(_BINARY, binary=True)
_set(_WINDOWED, windowed=True, feature_source=True)
_set(("BatchNormalization",), feature_source=True)
_set(_VIEW, view=True)
_set(_MIXES, mixes=True)
_set(("Shape", "Size"), shape_only=True)
_set(("ArgMax", "ArgMin"), discrete=True)
_set(("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "QLinearConv", "QLinearMatMul",
      "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
      "QLinearAveragePool", "QLinearSoftmax"), quantised=True)

_DEFAULT = OpInfo()


def info(op_type: str) -> OpInfo:
    """What onnxfix knows about ``op_type`` (all False for an op it does not know)."""
    return OPS.get(op_type, _DEFAULT)


def ops_where(**flags: bool) -> frozenset[str]:
    """The op types whose info has every given flag, e.g. ``ops_where(unary=True)``."""
    return frozenset(n for n, i in OPS.items() if all(getattr(i, k) == v for k, v in flags.items()))


UNARY = ops_where(unary=True)
BINARY = ops_where(binary=True)
WINDOWED = ops_where(windowed=True)
VIEW = ops_where(view=True)
MIXES = ops_where(mixes=True)
SHAPE_ONLY = ops_where(shape_only=True)
DISCRETE = ops_where(discrete=True)
FEATURE_SOURCES = ops_where(feature_source=True)
QUANTISED = ops_where(quantised=True)
