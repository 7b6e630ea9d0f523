"""The command line (DESIGN §2).

    onnxfix MODEL IMAGE [IMAGE ...] [--method NAME] [--target INDEX|LABEL] [--top-k K] [--layer NAME] ...
    onnxfix inspect MODEL
    onnxfix methods
    onnxfix evaluate | interpret | impression | view ...   (see SUBCOMMANDS below)

Exit codes: 0 ok, 2 bad usage or unreadable input, 3 unsupported model. Errors are one line on stderr, never a
traceback (set ONNXFIX_DEBUG=1 to see one). Outputs go to ``--out`` (default: the current folder) as
``<image-stem>.<method>.png``, written atomically; an output that would replace an input is refused, and an
existing file is kept — the output goes to the next free name (``<stem>-2.<method>.png``…) unless ``--overwrite``.
Resource limits: ``--max-image-pixels``, ``--max-model-mb``, ``--memory-budget-mb`` (docs/robustness.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from onnxfix.errors import InputError, OnnxfixError


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options every command that runs a model shares: labels, provider, output and preprocessing."""
    p.add_argument("--labels", default=None, help="labels file: one name per line, or JSON")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="ONNX Runtime provider")
    p.add_argument("--output", default=None, help="model output to explain (default: first float output)")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None, help="input size override")
    p.add_argument("--mean", nargs=3, type=float, metavar=("R", "G", "B"), default=None)
    p.add_argument("--std", nargs=3, type=float, metavar=("R", "G", "B"), default=None)
    p.add_argument("--scale", type=float, default=None, help="pixel scale before mean/std (default 1/255)")
    p.add_argument("--layout", choices=["nchw", "nhwc"], default=None)
    p.add_argument("--channels", choices=["rgb", "bgr", "gray"], default=None)


def _explain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="onnxfix", description="Explain an ONNX vision model's prediction on images.",
        epilog="Other commands: 'onnxfix inspect MODEL' (ops, inputs, which methods apply), "
               "'onnxfix methods' (list methods).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("images", nargs="+", help="image files (jpg, png, ...)")
    p.add_argument("--method", default="fixations", help="explanation method, or 'all' (default: fixations)")
    p.add_argument("--target", default=None, help="class index or label to explain (default: the top class)")
    p.add_argument("--step", type=int, default=None, help="time step for sequence outputs (default: most confident)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to print (default 5)")
    p.add_argument("--layer", default=None, help="layer for layer methods (tensor or node name)")
    p.add_argument("--out", default=".", help="folder for the PNGs (default: current folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image×method")
    add_model_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (default: write to the next free name, stem-2.method.png)")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help="refuse images above N pixels (default 100000000; decompression bombs)")
    p.add_argument("--max-model-mb", type=float, default=None, metavar="MB",
                   help="refuse models above MB, external data included (default 2048)")
    p.add_argument("--memory-budget-mb", type=float, default=None, metavar="MB",
                   help="refuse forward passes exposing more than MB of tensors (default: half the available memory)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a method option, repeatable: e.g. window=16, stride=8, baseline=0 (occlusion), k=3 "
                        "(discernible); values are read as Python literals (16, 0.5, (16, 8)), else as text")
    p.add_argument("--textual", action="store_true",
                   help="Grad-CAM's textual explanation (top/bottom-5 channels by alpha) as <stem>.textual.png")
    return p


def _overrides(a: argparse.Namespace) -> dict:
    o: dict = {"mean": a.mean, "std": a.std, "scale": a.scale, "layout": a.layout, "channels": a.channels}
    if a.channels == "gray":
        o["mean"] = a.mean[:1] if a.mean else None
        o["std"] = a.std[:1] if a.std else None
    if a.size:
        o["height"], o["width"] = a.size
    return {k: v for k, v in o.items() if v is not None}


def _options(items: list[str]) -> dict:
    import ast

    opts: dict = {}
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name.isidentifier():
            raise InputError(f"--option wants NAME=VALUE, got {item!r}")
        if name in ("image", "method", "target", "layer", "step", "top_k"):
            raise InputError(f"--option {name}=...: use --{name.replace('_', '-')} instead")
        try:
            opts[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            opts[name] = text.strip()
    return opts


def _target(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _out_name(out: Path, image: str, method: str, used: set[Path], overwrite: bool = False) -> Path:
    """``OUT/<stem>.<method>.png``; a name used in this run, or an existing file unless ``overwrite``, moves on to
    ``<stem>-2.<method>.png``, ``-3``..."""
    stem = Path(image).stem or "image"
    cand = out / f"{stem}.{method}.png"
    k = 2
    while cand in used or (not overwrite and os.path.lexists(cand)):
        cand = out / f"{stem}-{k}.{method}.png"
        k += 1
    used.add(cand)
    return cand


def cmd_explain(argv: list[str]) -> int:
    a = _explain_parser().parse_args(argv)
    from onnxfix.api import Explainer
    from onnxfix.methods import METHODS
    from onnxfix.render import panel, save_png

    if a.method != "all" and a.method not in METHODS:
        raise InputError(f"unknown method {a.method!r}; choose from {', '.join(METHODS)} or all")
    if a.textual and a.method not in ("gradcam", "all"):
        raise InputError(f"--textual is Grad-CAM's textual explanation; use it with --method gradcam (not {a.method})")
    ex = Explainer(a.model, provider=a.provider, labels=a.labels, output=a.output, preprocess=_overrides(a),
                   max_image_pixels=a.max_image_pixels, max_model_mb=a.max_model_mb,
                   memory_budget_mb=a.memory_budget_mb)
    if a.method == "all":
        methods = [n for n, why in ex.methods().items() if why is None]
        if not methods:
            raise InputError("no method applies to this model; see 'onnxfix inspect'")
    else:
        methods = [a.method]
    options = _options(a.option)
    out = Path(a.out)
    used: set[Path] = set()
    protect = [a.model, *a.images]
    for image in a.images:
        results = [ex.explain(image, method=m, target=_target(a.target), layer=a.layer, step=a.step,
                              top_k=a.top_k, **options, **({"textual": True} if a.textual and m == "gradcam" else {}))
                   for m in methods]
        if a.method == "all":
            png = _out_name(out, image, "all", used, a.overwrite)
            save_png(panel([r.render() for r in results]), png, protect=protect)
            pngs = [png] * len(results)
        else:
            pngs = [_out_name(out, image, results[0].method, used, a.overwrite)]
            results[0].save(pngs[0], protect=protect)
        textual_pngs = {}
        if a.textual:  # Grad-CAM §7 panel (onnxfix.methods.textual)
            from onnxfix.methods.textual import textual_panel

            for r in results:
                if "textual" in r.extras:
                    textual_pngs[id(r)] = _out_name(out, image, "textual", used, a.overwrite)
                    save_png(textual_panel(r), textual_pngs[id(r)], protect=protect)
        for r, png in zip(results, pngs, strict=True):
            if a.json:
                d = r.to_json(image, a.model, str(png))
                if id(r) in textual_pngs:
                    d["textual_png"] = str(textual_pngs[id(r)])
                print(json.dumps(d), flush=True)
        if not a.json:
            r = results[0]
            step = f" (step {r.step})" if r.step is not None else ""
            print(f"{image}{step}")
            for i, t in enumerate(r.top, 1):
                mark = "*" if t["index"] == r.target else " "
                print(f"  {mark}{i}. {t['label']:<28} {t['score']:.4f}  (class {t['index']}, logit {t['logit']:.3f})")
            for r2, png in zip(results, pngs, strict=True):
                extra = f", {len(r2.points)} points" if r2.points is not None else ""
                print(f"  {r2.method}: {png}  ({r2.seconds * 1000:.0f} ms{extra})")
                if id(r2) in textual_pngs:
                    print(f"  textual: {textual_pngs[id(r2)]}")
    return 0


def cmd_inspect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="onnxfix inspect", description="Describe a model and what onnxfix can do with it.")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from onnxfix.autodiff import VJP_RULES
    from onnxfix.fixations import RULES
    from onnxfix.methods import METHODS
    from onnxfix.model import Model

    m = Model(a.model)
    g = m.graph
    inv = g.op_inventory()
    path = g.nodes_between([m.input], m.head.logits)  # the data path; Shape-only branches need no rules
    info = {
        "model": a.model,
        "opset": g.opset,
        "inputs": [{"name": i, "shape": list(g.shape(i) or [])} for i in g.inputs],
        "outputs": [{"name": o, "shape": list(g.shape(o) or [])} for o in g.outputs],
        "explained": {"output": m.head.output, "logits": m.head.logits, "class_axis": m.head.class_axis,
                      "time_axis": m.head.time_axis},
        "ops": dict(sorted(inv.items(), key=lambda kv: -kv[1])),
        "fixations_rules_missing": sorted({n.op_type for n in path if n.op_type not in RULES}),
        "autodiff_rules_missing": sorted({n.op_type for n in path if n.op_type not in VJP_RULES}),
        "methods": {name: (why or "ok") for name, why in ((n, meth.applies(m)) for n, meth in METHODS.items())},
    }
    try:
        spec = m.preprocess()
        info["preprocess"] = {"size": [spec.height, spec.width], "layout": spec.layout, "channels": spec.channels,
                              "mean": list(spec.mean), "std": list(spec.std), "scale": spec.scale}
    except InputError as exc:
        info["preprocess"] = str(exc)
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model    {a.model}  (opset {g.opset}, {sum(inv.values())} nodes)")
    for i in info["inputs"]:
        print(f"input    {i['name']}  {i['shape']}")
    for o in info["outputs"]:
        print(f"output   {o['name']}  {o['shape']}")
    print(f"explains {m.head.logits}" + (" (before softmax)" if m.head.softmax else ""))
    print("preprocess", info["preprocess"])
    print("ops      " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    miss = info["fixations_rules_missing"]
    print("fixations rules missing on the data path: " + (", ".join(miss) if miss else "none"))
    miss = info["autodiff_rules_missing"]
    print("gradient rules missing on the data path:  " + (", ".join(miss) if miss else "none"))
    print("methods:")
    for name, status in info["methods"].items():
        print(f"  {name:<16} {status}")
    return 0


def cmd_methods(argv: list[str]) -> int:
    from onnxfix.methods import METHODS

    for name, m in METHODS.items():
        print(f"{name:<16} {m.summary}")
    return 0


# Subcommands other than explain: name -> "module:function" (imported only when used). A function takes the
# argument list after the subcommand and returns the exit code; it raises OnnxfixError for user errors.
SUBCOMMANDS: dict[str, str] = {
    "inspect": "onnxfix.cli:cmd_inspect",
    "methods": "onnxfix.cli:cmd_methods",
    "evaluate": "onnxfix.evaluate.cli:cmd_evaluate",
    "interpret": "onnxfix.interpret.cmd_interpret:cmd_interpret",
    "impression": "onnxfix.interpret.cmd_views:cmd_impression",
    "view": "onnxfix.interpret.cmd_views:cmd_view",
    "export": "onnxfix.export:cmd_export",
    "serve": "onnxfix.serve.cli:cmd_serve",
}


def _subcommand(name: str):
    import importlib

    module, func = SUBCOMMANDS[name].split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return _subcommand(argv[0])(argv[1:])
        return cmd_explain(argv)
    except OnnxfixError as exc:
        print(f"onnxfix: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("onnxfix: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse
        return int(exc.code) if isinstance(exc.code, int) else 2
    except Exception as exc:  # noqa: BLE001 - never a traceback for users
        if os.environ.get("ONNXFIX_DEBUG"):
            traceback.print_exc()
        print(f"onnxfix: internal error: {type(exc).__name__}: {exc} (set ONNXFIX_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
