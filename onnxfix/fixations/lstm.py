"""The LSTM rule of CNN Fixations (the paper's captioning case), for the ONNX ``LSTM`` op.

Paper: start from the largest element of the explained hidden state m_t, go back through the four gates
(i, o, f, g) *like fc layers* — inputs with a positive Hadamard contribution to a gate's pre-activation — to
x_t and to m_{t−1}, accumulate on m_{t−1}, and repeat down to the first step; x_t carries on to the image
embedding. Here:

* locations arriving on ``Y`` (t, d, n, j), ``Y_h`` or ``Y_c`` (d, n, j → the last step of direction d) are the
  explained hidden states; per step only the unit with the largest hidden value among those arriving is kept
  ("the largest element"), and every unit reached through the recurrent weights R is followed;
* except on a ``Y_h`` read only as the ``initial_h`` of further LSTM ops — a decoder unrolled one op per step,
  as a captioner whose step t input is the embedding of word t−1 must be: what arrives there is m_{t−1} as the
  next step accumulated it, and every unit is followed ("accumulates them as locations on m_{t−1}", §III-D);
* ``W`` (gates × input) and ``R`` (gates × hidden) are constants; contributions ignore biases and peepholes,
  which belong to no input;
* both directions of a bidirectional LSTM are traced, each in its own time order; ``layout`` 0 and 1 work.

The same network lowered to Gemm/Split/Sigmoid/Tanh/Mul/Add (newer PyTorch exporters) needs no special rule:
the generic fc, Split, Mul and Add rules give the same walk.
"""

from __future__ import annotations

import numpy as np

from onnxfix.fixations.registry import Rule, register
from onnxfix.fixations.rules import _unsupported
from onnxfix.kernels import fc_positive


@register("LSTM")
class LSTMRule(Rule):
    def backtrack(self, node, ctx, out):
        ins = list(node.inputs) + [""] * (8 - len(node.inputs))
        xn, wn, rn = ins[0], ins[1], ins[2]
        hn0 = ins[5]
        if ctx.is_data(wn) or ctx.is_data(rn):
            raise _unsupported(node, "W or R is computed at run time")
        layout = int(node.attrs.get("layout", 0))
        x = ctx.value(xn)
        if layout == 1:
            x = x.transpose(1, 0, 2)  # → [T, N, I]
        T, N, _ = x.shape
        W, R = ctx.value(wn), ctx.value(rn)
        D, four_h, _ = W.shape
        H = four_h // 4
        outs = list(node.outputs) + [""] * (3 - len(node.outputs))
        y = ctx.values.get(outs[0]) if outs[0] else None
        if y is None:
            raise _unsupported(node, "the LSTM's Y output is needed to trace it")
        if layout == 1:
            y = y.transpose(1, 2, 0, 3)  # [N, T, D, H] → [T, D, N, H]
        # explained hidden units per (d, n, t)
        seeds: dict[tuple[int, int, int], list[int]] = {}
        if outs[0] in out:
            locs = out[outs[0]]
            if layout == 1:
                locs = locs[:, [1, 2, 0, 3]]
            for t, d, n, j in locs:
                seeds.setdefault((int(d), int(n), int(t)), []).append(int(j))
        # direction d runs backwards in time for direction="reverse" and for the second half of "bidirectional"
        reverse = [node.attrs.get("direction", "forward") == "reverse" or d == 1 for d in range(D)]
        # Y_h read only as the initial_h of further LSTM ops: a decoder unrolled one op per step, and what
        # arrives is m_{t-1} as the next step's backtrack accumulated it: every unit is followed
        state = bool(outs[1]) and _only_initial_h(ctx, outs[1])
        accumulated: dict[tuple[int, int, int], set[int]] = {}
        for name in outs[1:]:
            if name and name in out:
                rows = out[name][:, [1, 0, 2]] if layout == 1 else out[name]  # Y_h/Y_c: [N, D, H] in layout 1
                for d, n, j in rows:
                    last = 0 if reverse[d] else T - 1
                    to = accumulated.setdefault((int(d), int(n), last), set()) if state and name == outs[1] else None
                    if to is not None:
                        to.add(int(j))
                    else:
                        seeds.setdefault((int(d), int(n), last), []).append(int(j))
        x_locs, h0_locs = [], []
        for d in range(D):
            order = range(T) if reverse[d] else range(T - 1, -1, -1)
            for n in range(N):
                carried: set[int] = set()
                for t in order:
                    units = set(carried) | accumulated.get((d, n, t), set())
                    arriving = seeds.get((d, n, t))
                    if arriving:
                        vals = y[t, d, n, arriving]
                        units.add(arriving[int(np.argmax(vals))])
                    carried = set()
                    if not units:
                        continue
                    u = np.array(sorted(units), np.int64)
                    cols = (np.arange(4)[:, None] * H + u[None, :]).reshape(-1)
                    locs2 = np.stack([np.zeros(len(cols), np.int64), cols], axis=1)
                    ma, _ = fc_positive(np.ascontiguousarray(x[t, n][None], np.float32),
                                        np.ascontiguousarray(W[d].T, np.float32), locs2)
                    for k in np.flatnonzero(ma[0]):
                        x_locs.append((t, n, int(k)))
                    prev = t + 1 if reverse[d] else t - 1
                    if 0 <= prev < T:
                        h_prev = y[prev, d, n]
                    elif hn0 and ctx.is_data(hn0):
                        h_prev = ctx.value(hn0)[n, d] if layout == 1 else ctx.value(hn0)[d, n]
                    else:
                        continue
                    mh, _ = fc_positive(np.ascontiguousarray(h_prev[None], np.float32),
                                        np.ascontiguousarray(R[d].T, np.float32), locs2)
                    hits = np.flatnonzero(mh[0])
                    if 0 <= prev < T:
                        carried = {int(k) for k in hits}
                    else:
                        h0_locs.extend((d, n, int(k)) for k in hits)
        res = {}
        if x_locs:
            xl = np.array(x_locs, np.int64)
            res[xn] = xl[:, [1, 0, 2]] if layout == 1 else xl
        if h0_locs and hn0 and ctx.is_data(hn0):
            hl = np.array(h0_locs, np.int64)
            res[hn0] = hl[:, [1, 0, 2]] if layout == 1 else hl
        return res


def _only_initial_h(ctx, name: str) -> bool:
    """True when tensor ``name`` is read only as the initial_h (input 5) of LSTM nodes."""
    cons = ctx.graph.consumers(name)
    return bool(cons) and all(c.op_type == "LSTM" and name not in c.inputs[:5] and list(c.inputs[5:6]) == [name]
                              and name not in c.inputs[6:] for c in cons)
