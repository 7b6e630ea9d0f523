#!/usr/bin/env python
"""Does each word of the sample captioner get its own fixations, on the object it names? (CNN Fixations §III-D)

    python tools/captioner_grounding.py [--model sample_models/captioner.onnx] [--n 100] [--seed 777]
                                        [--lstm paper|largest]

Renders ``--n`` fresh two-object scenes (tools/samples_data.render_caption, a seed the model never saw), explains
every word with ``fixations`` (``step=t``) and reports, over the scenes the model captions correctly:

* ``points_on_named``: mean share of the word's fixation points inside the named object's box (grown by 5% of
  the image side), and ``points_on_other`` inside the other object's;
* ``peak_on_named``: share of words whose heatmap peak lies in the named object's box;
* ``majority_on_named``: share of words with more points in the named object's box than in the other's;
* ``differ``: share of scenes whose words' fixation point sets differ;
* ``empty`` (per word): share of words with no fixation point at all (they count as on neither object).

* ``per_label``: the same per word type (the word the model said), and ``distinct_words``: words whose point set
  differs from the other word's in the same scene, over all words.

``--lstm largest`` measures the LSTM rule as it was before (units arriving on ``Y_h`` — m_{t−1} of a decoder
unrolled one LSTM op per step — reduced to the largest one); the default is the rule as it is (the paper:
"accumulates them as locations on m_{t−1}", all followed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import samples_data as D  # noqa: E402


def use_largest_only() -> None:
    """The LSTM rule as it was before issue 16's second pass: units arriving on ``Y_h`` are reduced to the largest
    one even when ``Y_h`` is the next step's initial state (m_{t-1} of an unrolled decoder)."""
    from onnxfix.fixations import lstm

    lstm._only_initial_h = lambda ctx, name: False


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
            empty = len(e.points) == 0  # no fixation at all: counts as on neither object
            pn = 0.0 if empty else inside(e.points, named).mean()
            po = 0.0 if empty else inside(e.points, other).mean()
            per.append({"label": e.label, "on_named": float(pn), "on_other": float(po), "empty": empty,
                        "peak": bool(inside([[x, y]], named)[0]),
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
            "distinct_words": f"{2 * sum(r['differ'] for r in ok)} / {len(words)}",
            "per_label": {lab: {k: round(float(np.mean([w[k] for w in words if w["label"] == lab])), 3)
                                for k in ("on_named", "on_other", "peak", "majority")}
                          | {"n": sum(w["label"] == lab for w in words)}
                          for lab in sorted({w["label"] for w in words})},
            "per_word": [{k: round(float(np.mean([r["words"][t][k] for r in ok])), 3)
                          for k in ("on_named", "on_other", "peak", "majority", "empty")} for t in range(2)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(HERE.parent / "sample_models" / "captioner.onnx"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--lstm", choices=["paper", "largest"], default="paper")
    a = ap.parse_args(argv)
    if a.lstm == "largest":
        use_largest_only()
    print(json.dumps({"lstm": a.lstm, **measure(a.model, a.n, a.seed)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
