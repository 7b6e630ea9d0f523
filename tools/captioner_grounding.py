#!/usr/bin/env python
"""Does each word of the sample captioner get its own fixations, on the object it names? (CNN Fixations §III-D)

    python tools/captioner_grounding.py [--model sample_models/captioner.onnx] [--n 100] [--seed 777]
                                        [--lstm current|accumulate]

Renders ``--n`` fresh two-object scenes (tools/samples_data.render_caption, a seed the model never saw), explains
every word with ``fixations`` (``step=t``) and reports, over the scenes the model captions correctly:

* ``points_on_named``: mean share of the word's fixation points inside the named object's box (grown by 5% of
  the image side), and ``points_on_other`` inside the other object's;
* ``peak_on_named``: share of words whose heatmap peak lies in the named object's box;
* ``majority_on_named``: share of words with more points in the named object's box than in the other's;
* ``differ``: share of scenes whose words' fixation point sets differ.

``--lstm accumulate`` runs the LSTM rule with the change proposed for onnxfix/fixations/lstm.py (units arriving on
``Y_h`` — the previous step's m_{t−1} in a decoder unrolled as one LSTM op per step — are all kept, as the paper
accumulates on m_{t−1}; today only the largest is), applied to the rule's own source text, to measure it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import samples_data as D  # noqa: E402

OLD = """                    if arriving:
                        vals = y[t, d, n, arriving]
                        units.add(arriving[int(np.argmax(vals))])
"""
NEW = """                    if arriving and (d, n, t) in from_state:  # m_{t-1} of an unrolled decoder: accumulate
                        units.update(arriving)
                    elif arriving:
                        vals = y[t, d, n, arriving]
                        units.add(arriving[int(np.argmax(vals))])
"""
OLD2 = """                    seeds.setdefault((int(d), int(n), last), []).append(int(j))
"""
NEW2 = """                    seeds.setdefault((int(d), int(n), last), []).append(int(j))
                    from_state.add((int(d), int(n), last))
"""
OLD3 = """        for name in outs[1:]:
"""
NEW3 = """        from_state: set[tuple[int, int, int]] = set()
        for name in outs[1:]:
"""


def use_accumulating_lstm_rule() -> None:
    """Patch LSTMRule.backtrack with the proposed change (fails loudly if the rule's text moved)."""
    from onnxfix.fixations import lstm

    def out4(text: str) -> str:  # the method's text once dedented out of its class
        return "".join(line[4:] if line.startswith("    ") else line for line in text.splitlines(keepends=True))

    src = textwrap.dedent(inspect.getsource(lstm.LSTMRule.backtrack))
    for old, new in ((OLD, NEW), (OLD2, NEW2), (OLD3, NEW3)):
        if src.count(out4(old)) != 1:
            raise SystemExit("onnxfix/fixations/lstm.py changed: the proposed diff no longer applies")
        src = src.replace(out4(old), out4(new))
    ns: dict = {}
    exec(compile(src, lstm.__file__, "exec"), vars(lstm), ns)  # noqa: S102 - our own file's text, patched
    lstm.LSTMRule.backtrack = ns["backtrack"]


def inside(pts: np.ndarray, box: list[float]) -> np.ndarray:
    pts = np.asarray(pts, float).reshape(-1, 2)
    return (pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])


def grow(box: list[float], m: float) -> list[float]:
    return [box[0] - m, box[1] - m, box[2] + m, box[3] + m]


def measure(model: str, n: int, seed: int) -> dict:
    import onnxfix

    ex = onnxfix.Explainer(model)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        img, toks, boxes = D.render_caption(rng)
        es = [ex.explain(img, step=t) for t in range(len(toks))]
        if [e.target for e in es] != list(toks):
            rows.append(None)
            continue
        m = 0.05 * max(img.size)
        per = []
        for t, e in enumerate(es):
            named, other = grow(boxes[t], m), grow(boxes[1 - t], m)
            y, x = np.unravel_index(int(np.argmax(e.heatmap)), e.heatmap.shape)
            pn, po = inside(e.points, named).mean(), inside(e.points, other).mean()
            per.append({"on_named": float(pn), "on_other": float(po), "peak": bool(inside([[x, y]], named)[0]),
                        "majority": bool(pn > po), "points": {tuple(p) for p in np.round(e.points, 3).tolist()}})
        rows.append({"words": per, "differ": per[0]["points"] != per[1]["points"]})
    ok = [r for r in rows if r is not None]
    words = [w for r in ok for w in r["words"]]
    return {"scenes": n, "captioned_correctly": len(ok),
            "points_on_named": round(float(np.mean([w["on_named"] for w in words])), 3),
            "points_on_other": round(float(np.mean([w["on_other"] for w in words])), 3),
            "peak_on_named": round(float(np.mean([w["peak"] for w in words])), 3),
            "majority_on_named": round(float(np.mean([w["majority"] for w in words])), 3),
            "differ": round(float(np.mean([r["differ"] for r in ok])), 3),
            "per_word": [{k: round(float(np.mean([r["words"][t][k] for r in ok])), 3)
                          for k in ("on_named", "on_other", "peak", "majority")} for t in range(2)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(HERE.parent / "sample_models" / "captioner.onnx"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--lstm", choices=["current", "accumulate"], default="current")
    a = ap.parse_args(argv)
    if a.lstm == "accumulate":
        use_accumulating_lstm_rule()
    print(json.dumps({"lstm": a.lstm, **measure(a.model, a.n, a.seed)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
