"""A literal numpy LRP on a tiny conv + fc net: the rules written as sums over contributions z_ij, from the papers
(Bach et al. 2015, PLoS ONE, eqs. 56–60; Montavon et al. 2017, Deep Taylor Decomposition §4; Montavon et al. 2019,
"Layer-wise Relevance Propagation: An Overview", §10.2) and Zennit's rule documentation — not the gradient trick
the engine uses. Every layer is a dense matrix (J outputs × I inputs) built by loops; slow and obvious.

The net (input 1×3×6×6, float32 weights from a seed; optionally BatchNormalization after conv1, or the last
layer as MatMul + a separate bias Add, as exporters write Linear layers)::

    conv1 3→4 3×3 pad 1 (+ BN) → ReLU → conv2 4→4 3×3 pad 1 → Add(·, relu1) → ReLU → AveragePool 2×2
    → Flatten → Gemm 36→10 → ReLU → Gemm 10→5 (or MatMul + Add) → logits

Rules per composite: conv1 ZPlus / ZBox / AlphaBeta(2, 1), conv2 ZPlus / Gamma / AlphaBeta(2, 1), both Gemms
Epsilon, the Add and the AveragePool Norm, ReLU Pass.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SHAPE = (1, 3, 6, 6)


def params(seed: int = 0, zero_bias: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def f(*s, scale=0.5):
        return (rng.standard_normal(s) * scale).astype(np.float32)

    p = {"w1": f(4, 3, 3, 3), "b1": f(4, scale=0.2), "w2": f(4, 4, 3, 3), "b2": f(4, scale=0.2),
         "w3": f(10, 36), "b3": f(10, scale=0.2), "w4": f(5, 10), "b4": f(5, scale=0.2),
         "bn_gamma": (0.5 + rng.random(4)).astype(np.float32), "bn_beta": f(4, scale=0.3),
         "bn_mean": f(4, scale=0.2), "bn_var": (0.5 + rng.random(4)).astype(np.float32)}
    if zero_bias:
        for k in ("b1", "b2", "b3", "b4"):
            p[k] = np.zeros_like(p[k])
    return p


def folded(p: dict[str, np.ndarray], eps: float = 1e-5) -> dict[str, np.ndarray]:
    """conv1's weights with the BatchNormalization folded in (float64 then float32)."""
    s = p["bn_gamma"].astype(np.float64) / np.sqrt(p["bn_var"].astype(np.float64) + eps)
    q = dict(p)
    q["w1"] = (p["w1"] * s[:, None, None, None]).astype(np.float32)
    q["b1"] = ((p["b1"] - p["bn_mean"]) * s + p["bn_beta"]).astype(np.float32)
    return q


def onnx_model(p: dict[str, np.ndarray], bn: bool = False, matmul_bias: bool = False) -> onnx.ModelProto:
    """The tiny net as ONNX (opset 17)."""
    inits = {k: v for k, v in p.items() if not k.startswith("bn_") or bn}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])]
    if bn:
        nodes.append(helper.make_node("BatchNormalization", ["c1", "bn_gamma", "bn_beta", "bn_mean", "bn_var"],
                                      ["c1n"], epsilon=1e-5))
    nodes += [
        helper.make_node("Relu", ["c1n" if bn else "c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Add", ["c2", "r1"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("AveragePool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g3"], transB=1),
        helper.make_node("Relu", ["g3"], ["r3"]),
    ]
    if matmul_bias:
        inits = dict(inits)
        inits["w4t"] = np.ascontiguousarray(p["w4"].T)
        del inits["w4"]
        nodes += [helper.make_node("MatMul", ["r3", "w4t"], ["m4"]), helper.make_node("Add", ["m4", "b4"], ["logits"])]
    else:
        nodes.append(helper.make_node("Gemm", ["r3", "w4", "b4"], ["logits"], transB=1))
    g = helper.make_graph(nodes, "tiny_lrp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


# ------------------------------------------------------------------------------------------- dense layers


def conv_matrix(w: np.ndarray, hw: tuple[int, int], pad: int) -> np.ndarray:
    """(M·H·W) × (C·H·W) matrix of a stride-1 'same' conv (pad = (k − 1) / 2), zero padding."""
    M, C, k, _ = w.shape
    H, W = hw
    A = np.zeros((M, H, W, C, H, W))
    for m in range(M):
        for y in range(H):
            for x in range(W):
                for c in range(C):
                    for dy in range(k):
                        for dx in range(k):
                            iy, ix = y + dy - pad, x + dx - pad
                            if 0 <= iy < H and 0 <= ix < W:
                                A[m, y, x, c, iy, ix] += w[m, c, dy, dx]
    return A.reshape(M * H * W, C * H * W)


def avgpool_matrix(C: int, hw: tuple[int, int], k: int) -> np.ndarray:
    H, W = hw
    A = np.zeros((C, H // k, W // k, C, H, W))
    for c in range(C):
        for y in range(H // k):
            for x in range(W // k):
                A[c, y, x, c, y * k:(y + 1) * k, x * k:(x + 1) * k] = 1.0 / (k * k)
    return A.reshape(C * (H // k) * (W // k), C * H * W)


def stab(z: np.ndarray, eps: float) -> np.ndarray:
    """Zennit's stabiliser: z + ε·sign(z), sign(0) = +1."""
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def pos(a):
    return np.maximum(a, 0.0)


def neg(a):
    return np.minimum(a, 0.0)


# ------------------------------------------------------------------------------------------- the rules


def rule_epsilon(W, b, a, R, eps):
    """R_i = Σ_j a_i w_ji / stab(Σ_i' a_i' w_ji' + b_j) · R_j (Bach et al. eq. 58)."""
    zij = W * a[None, :]
    zj = zij.sum(1) + b
    return (zij / stab(zj, eps)[:, None] * R[:, None]).sum(0)


def rule_zplus(W, b, a, R, eps):
    """z⁺ (α1β0 with negative inputs): the positive contributions a⁺w⁺ + a⁻w⁻, bias b⁺."""
    zij = pos(a)[None, :] * pos(W) + neg(a)[None, :] * neg(W)
    zj = zij.sum(1) + pos(b)
    return (zij / stab(zj, eps)[:, None] * R[:, None]).sum(0)


def rule_alpha_beta(W, b, a, R, alpha, beta, eps):
    """α·(positive contributions / their sum) − β·(negative contributions / their sum) (Bach et al. eq. 60)."""
    p = pos(a)[None, :] * pos(W) + neg(a)[None, :] * neg(W)
    n = pos(a)[None, :] * neg(W) + neg(a)[None, :] * pos(W)
    zp = p.sum(1) + pos(b)
    zn = n.sum(1) + neg(b)
    return (alpha * p / stab(zp, eps)[:, None] * R[:, None] - beta * n / stab(zn, eps)[:, None] * R[:, None]).sum(0)


def rule_gamma(W, b, a, R, g, eps):
    """Generalised γ: for z_j > 0 the contributions with w + γw⁺ on positive inputs and w + γw⁻ on negative ones;
    for z_j < 0 the reverse (Montavon et al. 2019 §10.2.3; Zennit ``Gamma``)."""
    z = (W * a[None, :]).sum(1) + b
    wp, wn = W + g * pos(W), W + g * neg(W)
    cp = pos(a)[None, :] * wp + neg(a)[None, :] * wn
    cn = pos(a)[None, :] * wn + neg(a)[None, :] * wp
    zp = cp.sum(1) + b + g * pos(b)
    zn = cn.sum(1) + b + g * neg(b)
    sp = np.where(z > 0, R / stab(zp, eps), 0.0)
    sn = np.where(z < 0, R / stab(zn, eps), 0.0)
    return (cp * sp[:, None] + cn * sn[:, None]).sum(0)


def rule_zbox(W, b, a, R, low, high, eps):
    """z^B: contributions a_i w_ij − l_i w⁺_ij − h_i w⁻_ij (Montavon et al. 2017 §4.3); the biases b − b⁺ − b⁻."""
    cij = a[None, :] * W - low[None, :] * pos(W) - high[None, :] * neg(W)
    zj = cij.sum(1) + b - pos(b) - neg(b)
    return (cij / stab(zj, eps)[:, None] * R[:, None]).sum(0)


def rule_norm(parts: list[np.ndarray], R: np.ndarray, eps: float) -> list[np.ndarray]:
    """Norm on a sum: R_k = x_k / stab(Σ x) · R."""
    z = sum(parts)
    return [x / stab(z, eps) * R for x in parts]


# ------------------------------------------------------------------------------------------- the net


def lrp(p: dict[str, np.ndarray], x: np.ndarray, target: int, composite: str, epsilon: float = 1e-6,
        stabilizer: float = 1e-6, gamma: float = 0.25, low=-3.0, high=3.0, matmul_bias: bool = False) -> tuple:
    """(input relevance shaped like x, logits) of the tiny net (no BatchNormalization: fold it first)."""
    f64 = {k: v.astype(np.float64) for k, v in p.items()}
    a0 = x.astype(np.float64).reshape(-1)
    A1 = conv_matrix(f64["w1"], (6, 6), 1)
    b1 = np.repeat(f64["b1"], 36)
    c1 = A1 @ a0 + b1
    r1 = pos(c1)
    A2 = conv_matrix(f64["w2"], (6, 6), 1)
    b2 = np.repeat(f64["b2"], 36)
    c2 = A2 @ r1 + b2
    s = c2 + r1
    r2 = pos(s)
    P = avgpool_matrix(4, (6, 6), 2)
    pl = P @ r2
    g3 = f64["w3"] @ pl + f64["b3"]
    r3 = pos(g3)
    logits = f64["w4"] @ r3 + f64["b4"]
    R = np.zeros(5)
    R[target] = logits[target]  # Zennit's attr_output = output × one-hot
    R = rule_epsilon(f64["w4"], f64["b4"], r3, R, epsilon)  # fc: Epsilon (MatMul + Add: the same layer)
    R = rule_epsilon(f64["w3"], f64["b3"], pl, R, epsilon)
    R = rule_epsilon(P, np.zeros(P.shape[0]), r2, R, stabilizer)  # AveragePool: Norm
    R_c2, R_r1a = rule_norm([c2, r1], R, stabilizer)  # Add: Norm (ReLU r2: Pass)
    if composite == "epsilon-plus":
        R_r1b = rule_zplus(A2, b2, r1, R_c2, stabilizer)
    elif composite == "epsilon-alpha2-beta1":
        R_r1b = rule_alpha_beta(A2, b2, r1, R_c2, 2.0, 1.0, stabilizer)
    else:
        R_r1b = rule_gamma(A2, b2, r1, R_c2, gamma, stabilizer)
    R1 = R_r1a + R_r1b  # both branches from r1 (ReLU r1: Pass)
    if composite == "epsilon-plus":
        R0 = rule_zplus(A1, b1, a0, R1, stabilizer)
    elif composite == "epsilon-alpha2-beta1":
        R0 = rule_alpha_beta(A1, b1, a0, R1, 2.0, 1.0, stabilizer)
    else:
        lo = np.broadcast_to(np.asarray(low, np.float64).reshape(-1, 1), (3, 36)).reshape(-1)
        hi = np.broadcast_to(np.asarray(high, np.float64).reshape(-1, 1), (3, 36)).reshape(-1)
        R0 = rule_zbox(A1, b1, a0, R1, lo, hi, stabilizer)
    return R0.reshape(x.shape), logits
