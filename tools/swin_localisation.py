"""Localisation on the Swin sample (issue #12): the ViT table's measure (tools/bench_transformers.py ``localise``) on
``sample_models/swin_shapes.onnx``.

    python tools/swin_localisation.py [--n 100] [--json out.json] [--only fixations]

Generated held-out scenes with one object and its box (tools/scenes.classification_set, seed 2002, the models' own
held-out distribution); each method explains the ground-truth class; pointing game (the map's maximum inside the
box) and box IoU (Grad-CAM's WSOL box at 15 % of the max; fixations: outlier removal + tightest box) — the code path
of bench_transformers.localise, called per method. A method that refuses (attention rollout on windowed attention)
or fails is listed with its message. Prints a markdown table (docs/transformers.md, "Swin").

Fixations run through the window tensors with shapes from ``Graph.shapes_at`` (onnxfix/fixations/plan.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGE1 = "/layers.0/blocks.1/Reshape_3_output_0"  # stage 1's last window partition [N·16, 16, 32]: a 16×16 map
METHODS = [
    ("gradcam", {}), ("gradcam++", {}), ("layercam", {}), ("hirescam", {}), ("saliency", {}),
    ("gradcam", {"layer": STAGE1}), ("layercam", {"layer": STAGE1}),
    ("attention-rollout", {}), ("attention-gradient", {}), ("fixations", {}),
]


def _bench():
    spec = importlib.util.spec_from_file_location("onnxfix_tools_bench_transformers",
                                                  ROOT / "tools" / "bench_transformers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["onnxfix_tools_bench_transformers"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def run(model: Path, n: int, seed: int = 2002, only: list[str] | None = None) -> list[dict]:
    bench = _bench()
    rows = []
    for method, opts in METHODS:
        if only and method not in only:
            continue
        try:
            rows += bench.localise(model, n, seed, [(method, opts)])
        except Exception as exc:  # noqa: BLE001 - a crash is a row of the table, with its message
            label = method + ("" if not opts else " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")")
            rows.append({"method": label, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{label:45s} failed: {type(exc).__name__}: {exc}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "sample_models" / "swin_shapes.onnx")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=2002)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", nargs="*", help="only these methods")
    a = ap.parse_args(argv)
    rows = run(a.model, a.n, a.seed, a.only)
    print()
    print(_bench().table(rows))
    for r in rows:
        if "error" in r:
            print(f"- {r['method']}: {r['error']}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
