"""Peak memory (RSS) of explaining one image with each method, every method in a fresh subprocess (issue #5).

    python tools/memory_report.py [--model efficientnet_lite0] [--methods all] [--threads 2] [--json]

For each method the child process imports onnxfix, loads the model with ``Explainer``, explains one 320×240
image once and reports ``ru_maxrss`` (the process's peak resident set, on Linux in KiB) together with the RSS after
import and after loading. A ``load-only`` row measures the model load without explaining, an ``activations`` row
``Explainer.activations`` (every intermediate tensor). ``exposed_mib`` is the runtime's estimate of the
intermediate tensors the method's forward pass exposes (what the memory budget checks). The model comes from the
real-models cache (tools/real_models.py, manifest key ``--model``) or is given as a path. Methods that do not
apply to the model are listed with their reason.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _child(model: str, method: str, threads: int, pre: dict) -> dict:
    import numpy as np

    rss_import = _rss_kib()
    from onnxfix import Explainer

    rss_import = max(rss_import, _rss_kib())
    t0 = time.perf_counter()
    ex = Explainer(model, threads=threads, preprocess=pre)
    rss_loaded = _rss_kib()
    load_s = time.perf_counter() - t0
    y, x = np.mgrid[0:240, 0:320]
    image = np.stack([(x * 0.8) % 256, (y * 1.1) % 256, ((x + y) * 0.5) % 256], axis=-1).astype(np.uint8)
    row = {"method": method, "rss_after_import_mib": rss_import / 1024, "rss_after_load_mib": rss_loaded / 1024,
           "load_s": load_s}
    mdl = ex.model
    feeds = {mdl.input: ex.prepare(image)[0]}
    if method == "activations":  # every intermediate tensor exposed (Explainer.activations)
        names = [t for n in mdl.graph.nodes for t in n.outputs if t]
        row["exposed_mib"] = mdl.runtime.exposed_bytes(names, feeds) / 1024**2
        t0 = time.perf_counter()
        ex.activations(image)
        row["explain_s"] = time.perf_counter() - t0
    elif method != "load-only":
        from onnxfix.methods import METHODS

        row["exposed_mib"] = mdl.runtime.exposed_bytes(METHODS[method].forward_tensors(mdl), feeds) / 1024**2
        t0 = time.perf_counter()
        e = ex.explain(image, method=method)
        row["explain_s"] = time.perf_counter() - t0
        row["target"] = e.label
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def _model_entry(name: str) -> tuple[str, dict]:
    if Path(name).is_file():
        return name, {}
    manifest = Path(os.environ.get("ONNXFIX_REAL_MODELS", ROOT / ".cache" / "real_models")) / "manifest.json"
    entry = json.loads(manifest.read_text())["models"][name]
    pre = {k: entry[k] for k in ("mean", "std", "scale", "channels", "layout") if k in entry}
    return entry["path"], pre


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0", help="manifest name or .onnx path")
    p.add_argument("--methods", default="all", help="comma-separated methods, or all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    path, pre = _model_entry(a.model)
    if a.child:
        print(json.dumps(_child(path, a.child, a.threads, pre)))
        return 0
    from onnxfix import Explainer

    applies = Explainer(path, threads=a.threads, preprocess=pre).methods()
    names = list(applies) if a.methods == "all" else a.methods.split(",")
    rows = []
    for name in ["load-only", "activations", *names]:
        if name in applies and applies[name]:
            rows.append({"method": name, "skipped": applies[name]})
            continue
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, __file__, "--model", a.model, "--threads", str(a.threads),
                            "--child", name], capture_output=True, text=True, env=env, cwd=ROOT)
        if r.returncode != 0:
            rows.append({"method": name, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        if not a.json:
            _print_row(rows[-1])
    if a.json:
        print(json.dumps({"model": a.model, "threads": a.threads, "rows": rows}, indent=2))
    return 0


def _print_row(r: dict) -> None:
    if "skipped" in r or "error" in r:
        print(f"{r['method']:<16} {'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']}")
        return
    extra = f"  explain {r['explain_s']:.2f} s" if "explain_s" in r else ""
    if "exposed_mib" in r:
        extra += f"  exposed {r['exposed_mib']:.1f} MiB"
    print(f"{r['method']:<16} peak RSS {r['peak_rss_mib']:7.1f} MiB  (after import {r['rss_after_import_mib']:.0f}, "
          f"after load {r['rss_after_load_mib']:.0f}){extra}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
