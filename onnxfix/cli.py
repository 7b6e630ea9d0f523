"""The command line (DESIGN §2).

    onnxfix MODEL INPUT [INPUT ...] [--method NAME[,NAME...]|all] [--target T] [--top-k K] [--layer NAME] ...
    onnxfix inspect MODEL
    onnxfix methods
    onnxfix evaluate | interpret | impression | view | batch | export | serve ...   (see SUBCOMMANDS below)
    onnxfix help COMMAND | onnxfix --help | onnxfix --version

INPUT is an image file, a folder (walked recursively: image extensions only, sorted) or a pattern the shell did not
expand (onnxfix.pipeline.collect_inputs). Exit codes: 0 ok, 2 bad usage or unreadable input, 3 unsupported model,
130 interrupted (Ctrl-C), 128 + n on signal n (SIGTERM: 143). Errors are one line on stderr with terminal control
characters escaped (onnxfix.errors.printable), never a traceback (set ONNXFIX_DEBUG=1 to see one).

Every flag has a declared type and range, checked before any work (:class:`Parser`, :func:`int_arg`,
:func:`float_arg`): a bad value is exit 2 naming the flag, the value and what is allowed.

Output policy (every subcommand): ``--out`` is a folder (default: the current folder); file names are derived
(``<image-stem>.<method>.png``…); an existing file is never replaced — the next free name (``<stem>-2.<method>.png``…)
is claimed atomically, so parallel runs into one folder never lose or swap outputs — unless ``--overwrite``; an
output never replaces an input; files get the user's umask (onnxfix.io.atomic). Resource limits:
``--max-image-pixels``, ``--max-model-mb``, ``--memory-budget-mb`` (docs/robustness.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from onnxfix.errors import InputError, OnnxfixError, printable


# -- typed flags ---------------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are :class:`InputError` (one line, exit 2) and which takes no
    abbreviated flags."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see '{self.prog} --help')")


_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,400}\.?[0-9]{0,400}|\.[0-9]{1,400})(?:[eE][+-]?[0-9]{1,6})?")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def int_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a decimal ASCII integer (at most 18 digits) in ``lo..hi``."""
    if lo is not None and hi is not None:
        allowed = f"an integer in {lo}..{hi}"
    elif lo is not None:
        allowed = f"an integer >= {lo}"
    else:
        allowed = "an integer"

    def parse(text: str) -> int:
        t = text.strip()
        if not _INT.fullmatch(t):
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not allowed; expected {allowed}")
        v = int(t)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{_shown(text)} is out of range; allowed: {allowed}")
        return v

    parse.__name__ = allowed
    return parse


def float_arg(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
              nonzero: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite decimal number (no nan/inf, no overflow) in the given interval."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    if nonzero:
        parts.append("not 0")
    allowed = "a finite number" + (f" {' and '.join(parts)}" if parts else "")

    def parse(text: str) -> float:
        t = text.strip()
        if not _FLOAT.fullmatch(t):
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not allowed; expected {allowed}")
        v = float(t)
        bad = not math.isfinite(v) or (nonzero and v == 0)
        if lo is not None:
            bad |= v <= lo if lo_open else v < lo
        if hi is not None:
            bad |= v >= hi if hi_open else v > hi
        if bad:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is out of range; allowed: {allowed}")
        return v

    parse.__name__ = allowed
    return parse


def parse_target_text(text: str | None, flag: str = "--target") -> int | str | None:
    """A CLI target: ASCII digits (optionally signed, at most 18) → class index; other text (a label, ``box:0``…)
    unchanged for :mod:`onnxfix.targets`. ``²`` or ``٣`` are not digits here; a 5000-digit number is refused."""
    if text is None:
        return None
    t = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", t):
        if len(t.lstrip("+-")) > 18:
            raise InputError(f"{flag} {_shown(text)} is out of range; allowed: a class index, a label or a target "
                             "such as box:0")
        return int(t)
    if not t:
        raise InputError(f"{flag} is empty; give a class index, a label or a target such as box:0")
    return text


#: Keywords of Explainer.explain and Python internals that --option may not set.
RESERVED_OPTIONS = frozenset({"image", "images", "method", "target", "layer", "step", "top_k", "batch_size", "self",
                              "options", "kwargs", "model"})


def parse_options(items: list[str]) -> dict[str, str]:
    """``--option NAME=VALUE`` items → ``{name: "value"}``. Names are checked here (an ASCII identifier, not a
    flag of its own); values stay text: the method's typed options convert and range-check them (no literal
    evaluation of untrusted text)."""
    opts: dict[str, str] = {}
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name.isascii() or not name.isidentifier() or name.startswith("_"):
            raise InputError(f"--option wants NAME=VALUE with a plain name, got {_shown(item)}")
        if name in RESERVED_OPTIONS:
            flag = f"--{name.replace('_', '-')}"
            raise InputError(f"--option {name}=...: not a method option" + (
                f"; use {flag} instead" if name in ("target", "layer", "step", "top_k", "method") else ""))
        if name in opts:
            raise InputError(f"--option {name} is given twice")
        opts[name] = text.strip()
    return opts


_options = parse_options  # the old name


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options every command that runs a model shares: labels, provider, output and preprocessing."""
    p.add_argument("--labels", default=None, help="labels file: one name per line, or JSON")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="ONNX Runtime provider")
    p.add_argument("--output", default=None, help="model output to explain (default: first float output)")
    p.add_argument("--size", nargs=2, type=int_arg(1, 16384), metavar=("H", "W"), default=None,
                   help="input size override (1..16384)")
    p.add_argument("--mean", nargs=3, type=float_arg(), metavar=("R", "G", "B"), default=None)
    p.add_argument("--std", nargs=3, type=float_arg(nonzero=True), metavar=("R", "G", "B"), default=None)
    p.add_argument("--scale", type=float_arg(nonzero=True), default=None,
                   help="pixel scale before mean/std (default 1/255)")
    p.add_argument("--layout", choices=["nchw", "nhwc"], default=None)
    p.add_argument("--channels", choices=["rgb", "bgr", "gray"], default=None)
    p.add_argument("--head", default=None, metavar="|".join(_head_choices()),
                   help="how to read the explained output (default: recognised from its shape; ctc:BLANK names the "
                        "CTC blank; docs/detection.md)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="value of another model input, held fixed (repeatable; default: from the graph)")
    p.add_argument("--time-axis", type=int_arg(-8, 8), default=None, help="time axis of a sequence output")
    p.add_argument("--class-axis", type=int_arg(-8, 8), default=None, help="class axis of the explained output")


def _head_choices() -> list[str]:
    from onnxfix.heads import HEAD_CHOICES

    return list(HEAD_CHOICES)


def model_kwargs(a: argparse.Namespace) -> dict:
    """Explainer keyword arguments from :func:`add_model_options`' flags (``--input`` files read safely)."""
    inputs = {}
    for item in getattr(a, "input", None) or []:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise InputError(f"--input wants NAME=FILE.npy, got {printable(item)}")
        try:
            import numpy as np

            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"--input {printable(name)}: cannot read {printable(path)} as a .npy array "
                             f"({type(exc).__name__})") from None
    return {"head": getattr(a, "head", None), "inputs": inputs or None, "time_axis": getattr(a, "time_axis", None),
            "class_axis": getattr(a, "class_axis", None)}


def add_output_options(p: argparse.ArgumentParser, default: str | None = ".", what: str = "the outputs") -> None:
    """``--out FOLDER`` and ``--overwrite``: the output policy every subcommand shares."""
    p.add_argument("--out", default=default, metavar="FOLDER",
                   help=f"folder for {what} (default: {'the current folder' if default == '.' else default})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files of the same name (default: the next free name, <stem>-2...; "
                        "an input is never replaced)")


def add_limit_options(p: argparse.ArgumentParser) -> None:
    """The resource limits (docs/robustness.md)."""
    p.add_argument("--max-image-pixels", type=int_arg(1), default=None, metavar="N",
                   help="refuse images above N pixels (default 100000000; decompression bombs)")
    p.add_argument("--max-model-mb", type=float_arg(0, lo_open=True), default=None, metavar="MB",
                   help="refuse models above MB, external data included (default 2048)")
    p.add_argument("--memory-budget-mb", type=float_arg(0, lo_open=True), default=None, metavar="MB",
                   help="refuse work needing more than MB of memory (default: half the available memory)")


#: One line per subcommand for ``onnxfix --help`` (written here, so listing never imports a module).
SUMMARIES: dict[str, str] = {
    "explain": "explain a model's predictions on images, folders or patterns (the default command)",
    "inspect": "describe a model: inputs, outputs, ops, and which methods apply",
    "methods": "list the explanation methods and their options",
    "evaluate": "score explanation methods on an annotated dataset (pointing, WSOL, deletion, sanity...)",
    "interpret": "relevant filters per class (mu-lasso), average patches and the ablation check",
    "view": "views of what a model computes: activation maps, first-layer filters, relevant filters",
    "impression": "a class impression: gradient ascent on the input from noise",
    "batch": "explain many images with worker processes, results in one table",
    "export": "export a model with its explanation built in, as ONNX",
    "serve": "serve explanations over HTTP",
    "help": "show the help of a command: onnxfix help COMMAND",
}


def _commands_text() -> str:
    names = ["explain", *[n for n in SUBCOMMANDS if n != "explain"], "help"]
    width = max(len(n) for n in names) + 2
    lines = [f"  {n:<{width}}{SUMMARIES.get(n, '')}" for n in names]
    return "commands:\n" + "\n".join(lines) + "\n\n'onnxfix help COMMAND' shows a command's options; " \
        "'onnxfix --version' the version."


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("onnxfix")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        import onnxfix

        return str(getattr(onnxfix, "__version__", "unknown"))


def _explain_parser() -> Parser:
    p = Parser(
        prog="onnxfix", usage="onnxfix MODEL INPUT [INPUT ...] [options]\n       onnxfix COMMAND ...",
        description="Explain an ONNX vision model's predictions. INPUT is an image file, a folder (walked "
                    "recursively, image files only, sorted) or a quoted pattern such as 'photos/*.jpg'.",
        epilog=_commands_text())
    p.add_argument("model", help="the .onnx file")
    p.add_argument("images", nargs="+", metavar="INPUT", help="image files, folders or patterns")
    p.add_argument("--method", default="fixations",
                   help="method, comma list (gradcam,fixations) or 'all' that apply (default: fixations)")
    p.add_argument("--target", default=None,
                   help="class index or label to explain, or a target such as box:0 (default: the top class)")
    p.add_argument("--step", type=int_arg(0), default=None,
                   help="time step for sequence outputs (default: the most confident)")
    p.add_argument("--top-k", type=int_arg(0, 100000), default=5, help="how many classes to print (default 5)")
    p.add_argument("--layer", default=None, help="layer for layer methods (tensor or node name)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image × method")
    add_output_options(p, what="the PNGs")
    add_model_options(p)
    add_limit_options(p)
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a method option, repeatable: e.g. window=16, stride=8, baseline=0 (occlusion), k=3 "
                        "(discernible); 'onnxfix methods' lists each method's options and types")
    p.add_argument("--textual", action="store_true",
                   help="Grad-CAM's textual explanation (top/bottom-5 channels by alpha) as <stem>.textual.png")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on a terminal when there is more than one image)")
    return p


def _overrides(a: argparse.Namespace) -> dict:
    o: dict = {"mean": a.mean, "std": a.std, "scale": a.scale, "layout": a.layout, "channels": a.channels}
    if a.channels == "gray":
        o["mean"] = a.mean[:1] if a.mean else None
        o["std"] = a.std[:1] if a.std else None
    if a.size:
        o["height"], o["width"] = a.size
    return {k: v for k, v in o.items() if v is not None}


def _target(text: str | None) -> int | str | None:
    return parse_target_text(text)


def _print(*parts: Any, file: Any = None) -> None:
    print(*parts, file=file if file is not None else sys.stdout, flush=True)


def cmd_explain(argv: list[str]) -> int:
    """``onnxfix MODEL INPUT...``: a thin parser over :func:`onnxfix.pipeline.iter_explain_files`."""
    a = _explain_parser().parse_args(argv)
    from onnxfix.methods import METHODS
    from onnxfix.pipeline import Skip, collect_inputs, iter_explain_files, parse_methods

    names, _ = parse_methods(a.method, METHODS)
    if a.textual and "gradcam" not in names:
        raise InputError(f"--textual is Grad-CAM's textual explanation; use it with --method gradcam "
                         f"(not {printable(a.method)})")
    target = parse_target_text(a.target)
    options = parse_options(a.option)
    inputs = collect_inputs(a.images, exclude=[a.out])
    from onnxfix.api import Explainer

    ex = Explainer(a.model, provider=a.provider, labels=a.labels, output=a.output, preprocess=_overrides(a),
                   max_image_pixels=a.max_image_pixels, max_model_mb=a.max_model_mb,
                   memory_budget_mb=a.memory_budget_mb, **model_kwargs(a))
    progress = not a.no_progress and _isatty(sys.stderr)
    last = None
    for ev in iter_explain_files(ex, inputs, a.method, a.out, model_path=a.model, target=target, layer=a.layer,
                                 step=a.step, top_k=a.top_k, options=options, overwrite=a.overwrite,
                                 textual=a.textual, progress=progress):
        if isinstance(ev, Skip):
            _print(f"onnxfix: {ev}", file=sys.stderr)
            continue
        if a.json:
            _print(json.dumps(ev.to_json(str(a.model))))
            continue
        r = ev.explanation
        if ev.image != last:
            last = ev.image
            step = f" (step {r.step})" if r.step is not None else ""
            lines = [f"{printable(ev.image)}{step}"]
            for i, t in enumerate(r.top, 1):
                mark = "*" if t["index"] == r.target else " "
                lines.append(f"  {mark}{i}. {printable(t['label']):<28} {t['score']:.4f}  (class {t['index']}, "
                             f"logit {t['logit']:.3f})")
            _print("\n".join(lines))
        extra = f", {len(r.points)} points" if r.points is not None else ""
        _print(f"  {ev.method}: {printable(ev.png)}  ({r.seconds * 1000:.0f} ms{extra})")
        if ev.textual_png is not None:
            _print(f"  textual: {printable(ev.textual_png)}")
    return 0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def cmd_inspect(argv: list[str]) -> int:
    """``onnxfix inspect MODEL``: ops, inputs, outputs, what is explained and which methods apply."""
    p = Parser(prog="onnxfix inspect", description="Describe a model and what onnxfix can do with it.")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    add_limit_options(p)
    a = p.parse_args(argv)
    from onnxfix.autodiff import VJP_RULES
    from onnxfix.fixations import RULES
    from onnxfix.heads import kind_summary
    from onnxfix.methods import METHODS
    from onnxfix.model import Model

    m = Model(a.model, max_model_bytes=None if a.max_model_mb is None else int(a.max_model_mb * 1024**2))
    g = m.graph
    inv = g.op_inventory()
    path = g.nodes_between([m.input], m.head.logits)  # the data path; Shape-only branches need no rules
    info = {
        "model": a.model,
        "opset": g.opset,
        "inputs": [{"name": i, "shape": list(g.shape(i) or [])} for i in g.inputs],
        "outputs": [{"name": o, "shape": list(g.shape(o) or [])} for o in g.outputs],
        "explained": {"output": m.head.output, "logits": m.head.logits, "class_axis": m.head.class_axis,
                      "time_axis": m.head.time_axis, "head": kind_summary(m.head, m)},
        "ops": dict(sorted(inv.items(), key=lambda kv: -kv[1])),
        "fixations_rules_missing": sorted({n.op_type for n in path if n.op_type not in RULES}),
        "autodiff_rules_missing": sorted({n.op_type for n in path if n.op_type not in VJP_RULES}),
        "methods": {name: (why or "ok") for name, why in ((n, meth.applies(m)) for n, meth in METHODS.items())},
    }
    try:
        spec = m.preprocess()
        shape = m.input_shape
        hw = (shape[2], shape[3]) if spec.layout == "nchw" else (shape[1], shape[2])
        size = [spec.height, spec.width] if all(isinstance(d, int) and d > 0 for d in hw) else \
            "the image's own (dynamic H/W; long side ≤ 640, multiples of 32 where the model needs them)"
        info["preprocess"] = {"size": size, "layout": spec.layout, "channels": spec.channels,
                              "mean": list(spec.mean), "std": list(spec.std), "scale": spec.scale}
    except InputError as exc:
        info["preprocess"] = str(exc)
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    lines = [f"model    {printable(a.model)}  (opset {g.opset}, {sum(inv.values())} nodes)"]
    lines += [f"input    {printable(i['name'])}  {i['shape']}" for i in info["inputs"]]
    lines += [f"output   {printable(o['name'])}  {o['shape']}" for o in info["outputs"]]
    lines.append(f"explains {printable(m.head.logits)}" + (" (before softmax)" if m.head.softmax else "")
                 + f"  head: {printable(info['explained']['head'])}")
    lines.append(f"preprocess {printable(info['preprocess'])}")
    lines.append("ops      " + ", ".join(f"{printable(k)} {v}" for k, v in info["ops"].items()))
    miss = info["fixations_rules_missing"]
    lines.append("fixations rules missing on the data path: " + (printable(", ".join(miss)) if miss else "none"))
    miss = info["autodiff_rules_missing"]
    lines.append("gradient rules missing on the data path:  " + (printable(", ".join(miss)) if miss else "none"))
    lines.append("methods:")
    lines += [f"  {name:<16} {printable(status)}" for name, status in info["methods"].items()]
    _print("\n".join(lines))
    return 0


def _method_options(m: Any) -> str:
    try:
        from onnxfix.methods.base import _describe, option_fields

        fields = option_fields(m.Options)
    except Exception:  # noqa: BLE001 - a method without declared options
        return ""
    return ", ".join(f"{k} ({_describe(t)}, default {d!r})" for k, (t, d) in fields.items())


def cmd_methods(argv: list[str]) -> int:
    """``onnxfix methods``: every method with its summary and typed options."""
    p = Parser(prog="onnxfix methods", description="List the explanation methods and their options.")
    p.add_argument("--json", action="store_true", help="print {name: {summary, options}} as JSON")
    a = p.parse_args(argv)
    from onnxfix.methods import METHODS

    if a.json:
        _print(json.dumps({n: {"summary": m.summary, "options": _method_options(m)} for n, m in METHODS.items()}))
        return 0
    lines = []
    for name, m in METHODS.items():
        lines.append(f"{name:<16} {m.summary}")
        opts = _method_options(m)
        if opts:
            lines.append(f"{'':<16}   options: {opts}")
    _print("\n".join(lines))
    return 0


def cmd_help(argv: list[str]) -> int:
    """``onnxfix help [COMMAND]``: the command list, or one command's options."""
    if not argv:
        _print(_explain_parser().format_help())
        return 0
    name = argv[0]
    if name == "explain":
        _print(_explain_parser().format_help())
        return 0
    if name == "help":
        _print(f"onnxfix help COMMAND: {SUMMARIES['help']}\n\n{_commands_text()}")
        return 0
    if name not in SUBCOMMANDS:
        raise InputError(f"no command {_shown(name)}; commands: explain, {', '.join(SUBCOMMANDS)}")
    try:
        func = _subcommand(name)
    except InputError as exc:
        _print(f"onnxfix {name}: {SUMMARIES.get(name, '')}\n({exc})")
        return 0
    return func(["--help"])


# Subcommands other than explain: name -> "module:function" (imported only when used). A function takes the
# argument list after the subcommand and returns the exit code; it raises OnnxfixError for user errors.
SUBCOMMANDS: dict[str, str] = {
    "inspect": "onnxfix.cli:cmd_inspect",
    "methods": "onnxfix.cli:cmd_methods",
    "evaluate": "onnxfix.evaluate.cli:cmd_evaluate",
    "interpret": "onnxfix.interpret.cmd_interpret:cmd_interpret",
    "impression": "onnxfix.interpret.cmd_views:cmd_impression",
    "view": "onnxfix.interpret.cmd_views:cmd_view",
    "batch": "onnxfix.batch.cli:cmd_batch",
    "export": "onnxfix.export:cmd_export",
    "serve": "onnxfix.serve.cli:cmd_serve",
}


def _subcommand(name: str) -> Callable[[list[str]], int]:
    """The function of subcommand ``name``; InputError (exit 2) when this installation lacks it."""
    import importlib

    module, func = SUBCOMMANDS[name].split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise InputError(f"'onnxfix {name}' is not available in this installation ({printable(missing)} cannot be "
                         "imported)") from None
    except AttributeError:
        raise InputError(f"'onnxfix {name}' is not available in this installation ({module} has no {func})") \
            from None


def _stderr(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's last flush raises nothing."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


def _dispatch(argv: list[str]) -> int:
    if not argv:
        raise InputError("no model given: onnxfix MODEL INPUT... ('onnxfix --help' lists the commands)")
    if argv[0] in ("-h", "--help"):
        return cmd_help([])
    if argv[0] in ("-V", "--version"):
        _print(f"onnxfix {_version()}")
        return 0
    if argv[0] == "help":
        return cmd_help(argv[1:])
    if argv[0] == "explain":
        return cmd_explain(argv[1:])
    if argv[0] in SUBCOMMANDS:
        return _subcommand(argv[0])(argv[1:])
    return cmd_explain(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code (never raises, never
    prints a traceback unless ``ONNXFIX_DEBUG`` is set)."""
    from onnxfix.io.atomic import Terminated, reason, remove_partial_files, signal_cleanup

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("ONNXFIX_DEBUG"))
    with signal_cleanup():
        try:
            return _dispatch(argv)
        except OnnxfixError as exc:
            if debug:
                traceback.print_exc()
            _stderr(f"onnxfix: error: {printable(exc)}")
            return exc.exit_code
        except Terminated as exc:
            remove_partial_files()
            _stderr(f"onnxfix: terminated (signal {exc.signum})")
            return 128 + exc.signum
        except KeyboardInterrupt:
            remove_partial_files()
            _stderr("onnxfix: interrupted")
            return 130
        except SystemExit as exc:  # argparse's --help, or a subcommand's own exit
            return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except BrokenPipeError:
            _silence_stdout()
            _stderr("onnxfix: error: <stdout>: the reader closed the pipe (broken pipe); output stopped")
            return 2
        except OSError as exc:
            if debug:
                traceback.print_exc()
            where = exc.filename if exc.filename is not None else "<system>"
            _stderr(f"onnxfix: error: {printable(where)}: {reason(exc)}")
            return 2
        except MemoryError:
            _stderr("onnxfix: error: out of memory; lower --size, the image size or --memory-budget-mb")
            return 2
        except Exception as exc:  # noqa: BLE001 - never a traceback for users
            if debug:
                traceback.print_exc()
            _stderr(f"onnxfix: internal error: {type(exc).__name__}: {printable(exc)} (set ONNXFIX_DEBUG=1 for "
                    "details)")
            return 1


if __name__ == "__main__":
    sys.exit(main())
