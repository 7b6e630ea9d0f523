"""The hostile-input corpus, round 2 (issue #17): one group of generated cases per class of failure found.

Classes (``Case2.cls``): ``concurrency`` (claiming output names), ``overwrite`` (the output policy of every
subcommand), ``os-error`` (OS errors as one-line messages), ``values`` (typed flags and options), ``terminal``
(untrusted text escaped), ``resources`` (bounded reads and allocations), ``wrong`` (silently wrong answers),
``external`` (in-memory models and external data), ``inputs`` (folders, patterns, ``--method all``), ``box`` (the box
holds its map's peak), ``small`` (file modes, warnings, help/version).

A CLI case's ``build(folder)`` writes its files and returns the argv; an API case's returns a function to call. The
runner (tests/test_hostile2.py) checks for every case: the exit code; no traceback; no temporary file left; no terminal
control character in stdout/stderr; inputs unchanged; for a failure one line ``onnxfix: error: …`` holding the
``message`` words and nothing written; for a success that new files match ``new`` and the case's ``check``.
``lead=True`` marks cases that need the core API of issue #10 (typed options, strict targets, flags that do not
apply).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from tests.hostile import images as I
from tests.hostile import models as M


@dataclass
class Case2:
    id: str
    cls: str
    build: Callable[[Path], Any]
    code: int
    message: tuple[str, ...] = ()
    check: Callable[[Path, list[str], str, str], None] | None = None
    new: tuple[str, ...] = ("out/*.png",)
    patch: Callable[[Path], Any] | None = None
    lead: bool = False
    tags: set[str] = field(default_factory=set)


CLASSES = ("concurrency", "overwrite", "os-error", "values", "terminal", "resources", "wrong", "external", "inputs",
           "box", "small")


def _photo(folder: Path, name: str = "photo.png", h: int = 20, w: int = 30, seed: int = 1) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(I.pixels(h, w, seed)).save(p, format="PNG")
    return p


def _model(folder: Path, m: onnx.ModelProto | None = None, name: str = "model.onnx") -> Path:
    p = folder / name
    p.write_bytes((m if m is not None else M.cnn()).SerializeToString())
    return p


def cli(cid: str, cls: str, code: int, *message: str, argv: Callable[[Path, Path, Path], list[str]],
        model: Callable[[], onnx.ModelProto] | None = None, **kw: Any) -> Case2:
    def build(folder: Path) -> list[str]:
        return [str(x) for x in argv(folder, _model(folder, model() if model else None), _photo(folder))]

    return Case2(cid, cls, build, code, tuple(message), **kw)


def api(cid: str, cls: str, code: int, *message: str, run: Callable[[Path], Callable[[], Any]], **kw: Any) -> Case2:
    return Case2(cid, cls, run, code, tuple(message), new=kw.pop("new", ("*",)), **kw)


def _out(f: Path) -> str:
    return str(f / "out")


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


# -- 1. concurrency: claiming output names --------------------------------------------------------------------------
def _concurrency() -> list[Case2]:
    cs: list[Case2] = []

    def existing(kind: str):
        def argv(f: Path, m: Path, i: Path) -> list[str]:
            (f / "out").mkdir()
            target = f / "out" / "photo.fixations.png"
            if kind == "dangling-symlink":
                os.symlink(f / "nowhere.png", target)
            elif kind == "directory":
                target.mkdir()
            elif kind == "fifo":
                os.mkfifo(target)
            elif kind == "symlink-to-input":
                os.symlink(i, target)
            elif kind == "readonly-file":
                target.write_bytes(b"OLD")
                target.chmod(0o444)
            elif kind == "stale-part":
                (f / "out" / ".onnxfix-abc.part").write_bytes(b"stale")
            elif kind == "gap":
                target.write_bytes(b"OLD")
                (f / "out" / "photo-3.fixations.png").write_bytes(b"OLD")
            return [m, i, "--out", f / "out", "--json"]

        return argv

    def named(expected: str):
        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            (d,) = _json_lines(out)
            assert Path(d["heatmap_png"]).name == expected, d["heatmap_png"]
            with Image.open(d["heatmap_png"]) as im:
                assert im.size == (30, 20)

        return check

    for kind, want in (("dangling-symlink", "photo-2.fixations.png"), ("directory", "photo-2.fixations.png"),
                       ("fifo", "photo-2.fixations.png"), ("symlink-to-input", "photo-2.fixations.png"),
                       ("readonly-file", "photo-2.fixations.png"), ("stale-part", "photo.fixations.png"),
                       ("gap", "photo-2.fixations.png")):
        cs.append(cli(f"claim-existing-{kind}", "concurrency", 0, argv=existing(kind), check=named(want)))

    def same_stem(n: int, *extra: str):
        def argv(f: Path, m: Path, i: Path) -> list[str]:
            imgs = [_photo(f / f"d{k}", "photo.png", h=20 + k, w=30 + k, seed=k) for k in range(n)]
            (f / "out").mkdir()
            (f / "out" / "photo.fixations.png").write_bytes(b"OLD")
            return [m, *imgs, "--out", f / "out", "--json", *extra]

        return argv

    def json_names_right(f: Path, argv: list[str], out: str, err: str) -> None:
        lines = _json_lines(out)
        pngs = [d["heatmap_png"] for d in lines]
        assert len(set(pngs)) == len(pngs), pngs
        for d in lines:
            k = int(Path(d["image"]).parent.name[1:])
            with Image.open(d["heatmap_png"]) as im:
                assert im.size == (30 + k, 20 + k), (d, im.size)
        assert (f / "out" / "photo.fixations.png").read_bytes() == b"OLD" or "--overwrite" in argv

    for n in (2, 3, 5):
        cs.append(cli(f"claim-same-stem-{n}-images", "concurrency", 0, argv=same_stem(n), check=json_names_right))
    cs.append(cli("claim-same-stem-overwrite", "concurrency", 0, argv=same_stem(3, "--overwrite"),
                  check=json_names_right, new=("out/*.png",)))

    def all_panel(f: Path, m: Path, i: Path) -> list[str]:
        (f / "out").mkdir()
        (f / "out" / "photo.all.png").write_bytes(b"OLD")
        return [m, i, "--method", "fixations,occlusion", "--out", f / "out"]

    def two_pngs(f: Path, argv: list[str], out: str, err: str) -> None:
        names = sorted(p.name for p in (f / "out").iterdir())
        assert names == ["photo.all.png", "photo.fixations.png", "photo.occlusion.png"], names

    cs.append(cli("claim-method-list-names", "concurrency", 0, argv=all_panel, check=two_pngs))
    return cs


# -- 2. the output policy of every subcommand ------------------------------------------------------------------------
def _overwrite() -> list[Case2]:
    cs: list[Case2] = []

    def view(kind: str, *extra: str, out: Callable[[Path, Path, Path], Any] | None = None, pre=None):
        def argv(f: Path, m: Path, i: Path) -> list[str]:
            if pre:
                pre(f, m, i)
            args = ["view", m] + ([i] if kind != "--first-layer-filters" else []) + [kind]
            return [*args, "--out", out(f, m, i) if out else f / "out", *extra]

        return argv

    def old(name: str):
        def pre(f: Path, m: Path, i: Path) -> None:
            (f / "out").mkdir(exist_ok=True)
            (f / "out" / name).write_bytes(b"OLD")

        return pre

    def kept_and(name: str, new_name: str):
        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            assert (f / "out" / name).read_bytes() == b"OLD"
            assert (f / "out" / new_name).is_file(), sorted(p.name for p in (f / "out").iterdir())
            assert new_name in out, out

        return check

    cs.append(cli("view-activations-existing", "overwrite", 0,
                  argv=view("--activations", pre=old("photo.activations.png")),
                  check=kept_and("photo.activations.png", "photo-2.activations.png")))
    cs.append(cli("view-first-layer-existing", "overwrite", 0,
                  argv=view("--first-layer-filters", pre=old("model.first-layer-filters.png")),
                  check=kept_and("model.first-layer-filters.png", "model-2.first-layer-filters.png")))

    def replaced(name: str):
        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            with Image.open(f / "out" / name) as im:
                assert im.format == "PNG"

        return check

    cs.append(cli("view-activations-overwrite", "overwrite", 0,
                  argv=view("--activations", "--overwrite", pre=old("photo.activations.png")),
                  check=replaced("photo.activations.png")))
    cs.append(cli("view-out-file-name-existing", "overwrite", 0,
                  argv=view("--activations", out=lambda f, m, i: f / "out" / "f.png", pre=old("f.png")),
                  check=kept_and("f.png", "f-2.png")))
    cs.append(cli("view-out-is-the-image", "overwrite", 2, "refusing", argv=view("--activations",
                                                                                   out=lambda f, m, i: i)))
    cs.append(cli("view-out-is-the-image-overwrite", "overwrite", 2, "refusing",
                  argv=view("--activations", "--overwrite", out=lambda f, m, i: i)))
    cs.append(cli("view-out-is-the-model", "overwrite", 2, "refusing",
                  argv=view("--first-layer-filters", out=lambda f, m, i: m)))

    def other_file(f: Path, m: Path, i: Path) -> Path:
        p = f / "notes.txt"
        p.write_text("mine")
        return p

    cs.append(cli("view-out-is-another-file", "overwrite", 2, "must be a folder",
                  argv=view("--activations", out=other_file)))

    def impression(*extra: str, out=None, pre=None):
        def argv(f: Path, m: Path, i: Path) -> list[str]:
            if pre:
                pre(f, m, i)
            return ["impression", m, "--target", "1", "--steps", "2", "--quiet", "--zoom", "1", "--out",
                    out(f, m, i) if out else f / "out", *extra]

        return argv

    cs.append(cli("impression-existing", "overwrite", 0, argv=impression(pre=old("model.impression-b.png")),
                  check=kept_and("model.impression-b.png", "model-2.impression-b.png")))
    cs.append(cli("impression-overwrite", "overwrite", 0,
                  argv=impression("--overwrite", pre=old("model.impression-b.png")),
                  check=replaced("model.impression-b.png")))
    cs.append(cli("impression-out-is-the-model", "overwrite", 2, "refusing", argv=impression(out=lambda f, m, i: m)))

    # evaluate: a tiny dataset of two images (labels 0 and 1), pointing only
    def dataset(f: Path, extra_image: str | None = None) -> Path:
        d = f / "ds"
        for k in range(2):
            _photo(d, f"im{k}.png", seed=10 + k)
        rows = [{"file": f"im{k}.png", "label": k, "boxes": [[2, 2, 20, 15]]} for k in range(2)]
        if extra_image:
            _photo(d, extra_image, seed=30)
            rows.append({"file": extra_image, "label": 2})
        (d / "annotations.json").write_text(json.dumps({"images": rows}))
        return d

    def evaluate(*extra: str, pre=None, out=None, extra_image=None):
        def argv(f: Path, m: Path, i: Path) -> list[str]:
            d = dataset(f, extra_image)
            if pre:
                pre(f, m, i)
            return ["evaluate", m, d, "--methods", "gradcam", "--metrics", "pointing", "--no-chart", "--out",
                    out(f) if out else f / "out", *extra]

        return argv

    ev_new = ("out/*", "ds/*")

    def user_json(f: Path, m: Path, i: Path) -> None:
        (f / "out").mkdir(exist_ok=True)
        (f / "out" / "model.ds.json").write_text('{"mine": true}')

    def evaluate_moved(f: Path, argv: list[str], out: str, err: str) -> None:
        assert json.loads((f / "out" / "model.ds.json").read_text()) == {"mine": True}
        assert (f / "out" / "model.ds-2.jsonl").is_file() and (f / "out" / "model.ds-2.json").is_file()

    cs.append(cli("evaluate-user-file-kept", "overwrite", 0, argv=evaluate(pre=user_json), check=evaluate_moved,
                  new=ev_new))

    def dataset_image_kept(f: Path, argv: list[str], out: str, err: str) -> None:
        assert (f / "ds" / "model.ds-2.json").is_file()
        with Image.open(f / "ds" / "model.ds.json.png" if False else f / "ds" / "model.ds.png") as im:
            assert im.size == (30, 20)

    cs.append(cli("evaluate-out-is-dataset-image-kept", "overwrite", 0,
                  argv=evaluate(out=lambda f: f / "ds", extra_image="model.ds.png"), check=dataset_image_kept,
                  new=ev_new))
    cs.append(cli("evaluate-overwrite-never-an-input", "overwrite", 2, "refusing to overwrite an input",
                  argv=evaluate("--overwrite", out=lambda f: f / "ds", extra_image="model.ds.png"), new=ev_new))

    def rerun(f: Path, m: Path, i: Path) -> None:
        from onnxfix.cli import main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            code = main(["evaluate", str(m), str(f / "ds"), "--methods", "gradcam", "--metrics", "pointing",
                         "--no-chart", "--out", str(f / "out")])
        assert code == 0, err.getvalue()

    def resumed(f: Path, argv: list[str], out: str, err: str) -> None:
        names = sorted(p.name for p in (f / "out").iterdir())
        assert names == ["model.ds.csv", "model.ds.json", "model.ds.jsonl"], names

    cs.append(cli("evaluate-rerun-resumes-own-files", "overwrite", 0, argv=evaluate(pre=rerun), check=resumed,
                  new=ev_new, tags={"modifies-own"}))

    def fresh(f: Path, argv: list[str], out: str, err: str) -> None:
        assert (f / "out" / "model.ds-2.jsonl").is_file() and (f / "out" / "model.ds.jsonl").is_file()

    cs.append(cli("evaluate-fresh-new-prefix", "overwrite", 0, argv=evaluate("--fresh", pre=rerun), check=fresh,
                  new=ev_new))
    return cs


# -- 3. OS errors ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _raise_in(target: Any, attr: str, err: int, only_binary_png: bool = False):
    real = getattr(target, attr)

    def boom(*a: Any, **k: Any) -> Any:
        raise OSError(err, os.strerror(err))

    setattr(target, attr, boom)
    try:
        yield
    finally:
        setattr(target, attr, real)


@contextlib.contextmanager
def _fsize_limit(limit: int):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


class _BrokenStdout:
    def write(self, s: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def fileno(self) -> int:
        raise OSError("no fileno")

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _broken_stdout():
    import sys

    real = sys.stdout
    sys.stdout = _BrokenStdout()  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = real


def _os_errors() -> list[Case2]:
    cs: list[Case2] = []

    def long_stem(f: Path, m: Path, i: Path) -> list[str]:
        img = _photo(f, "x" * 250 + ".png")
        return [m, img, "--out", f / "out"]

    cs.append(cli("oserr-output-name-too-long", "os-error", 2, "file name too long", "x" * 50, argv=long_stem))
    cs.append(cli("oserr-out-folder-name-too-long", "os-error", 2, "cannot write", "too long",
                  argv=lambda f, m, i: [m, i, "--out", f / ("o" * 300)]))
    cs.append(cli("oserr-labels-name-too-long", "os-error", 2, "labels",
                  argv=lambda f, m, i: [m, i, "--labels", f / ("l" * 300), "--out", f / "out"]))
    cs.append(cli("oserr-image-name-too-long", "os-error", 2, "too long",
                  argv=lambda f, m, i: [m, f / ("i" * 300 + ".png"), "--out", f / "out"]))
    cs.append(cli("oserr-file-size-limit", "os-error", 2, "file too large", "photo.fixations.png",
                  argv=lambda f, m, i: [m, i, "--out", f / "out"], patch=lambda f: _fsize_limit(300)))
    cs.append(cli("oserr-disk-full", "os-error", 2, "no space left", "photo.fixations.png",
                  argv=lambda f, m, i: [m, i, "--out", f / "out"],
                  patch=lambda f: _raise_in(Image.Image, "save", errno.ENOSPC)))
    cs.append(cli("oserr-quota", "os-error", 2, "quota",
                  argv=lambda f, m, i: [m, i, "--out", f / "out"],
                  patch=lambda f: _raise_in(Image.Image, "save", errno.EDQUOT)))
    cs.append(cli("oserr-read-only-fs", "os-error", 2, "read-only file system", "photo.fixations.png",
                  argv=lambda f, m, i: [m, i, "--out", f / "out"],
                  patch=lambda f: _raise_in(os, "link", errno.EROFS)))
    import tempfile

    cs.append(cli("oserr-permission-denied", "os-error", 2, "permission denied", "out",
                  argv=lambda f, m, i: [m, i, "--out", f / "out"],
                  patch=lambda f: _raise_in(tempfile, "mkstemp", errno.EACCES)))

    def dir_in_the_way(f: Path, m: Path, i: Path) -> list[str]:
        (f / "out" / "photo.fixations.png").mkdir(parents=True)
        return [m, i, "--out", f / "out", "--overwrite"]

    cs.append(cli("oserr-folder-in-the-way-overwrite", "os-error", 2, "a folder is in the way", argv=dir_in_the_way))
    cs.append(cli("oserr-out-is-a-device", "os-error", 2, "cannot write", argv=lambda f, m, i: [m, i, "--out",
                                                                                                  "/dev/null"]))
    cs.append(cli("oserr-broken-pipe-json", "os-error", 2, "broken pipe", "<stdout>",
                  argv=lambda f, m, i: [m, i, "--out", f / "out", "--json"], patch=lambda f: _broken_stdout(),
                  new=("out/*.png",)))
    cs.append(cli("oserr-broken-pipe-text", "os-error", 2, "broken pipe",
                  argv=lambda f, m, i: [m, i, "--out", f / "out"], patch=lambda f: _broken_stdout(),
                  new=("out/*.png",)))
    cs.append(cli("oserr-broken-pipe-methods", "os-error", 2, "broken pipe", argv=lambda f, m, i: ["methods"],
                  patch=lambda f: _broken_stdout()))
    return cs


# -- 4. values: typed flags and options ------------------------------------------------------------------------------
def _values() -> list[Case2]:
    cs: list[Case2] = []
    flags = [
        ("--top-k", ["-1"]), ("--top-k", ["1.5"]), ("--top-k", ["\u0663"]), ("--top-k", ["9" * 30]),
        ("--top-k", ["1_0"]), ("--step", ["-1"]), ("--step", ["x"]), ("--size", ["0", "5"]),
        ("--size", ["1e3", "5"]), ("--size", ["20000", "5"]), ("--mean", ["nan", "0", "0"]),
        ("--mean", ["inf", "0", "0"]), ("--std", ["-0", "1", "1"]), ("--std", ["1e400", "1", "1"]),
        ("--scale", ["0"]), ("--scale", ["nan"]), ("--max-image-pixels", ["0"]), ("--max-image-pixels", ["-5"]),
        ("--max-image-pixels", ["1e6"]), ("--max-model-mb", ["nan"]), ("--max-model-mb", ["inf"]),
        ("--max-model-mb", ["-1"]), ("--max-model-mb", ["0"]), ("--memory-budget-mb", ["inf"]),
        ("--memory-budget-mb", ["nan"]), ("--memory-budget-mb", ["1e400"]), ("--memory-budget-mb", ["0x10"]),
        ("--provider", ["tpu"]), ("--layout", ["nhcw"]),
    ]
    for k, (flag, vals) in enumerate(flags):
        cs.append(cli(f"value-{flag.strip('-')}-{k:02d}", "values", 2, flag,
                      argv=lambda f, m, i, flag=flag, vals=vals: [m, i, "--out", f / "out", flag, *vals]))
    targets = [("\u00b2", "\u00b2", True), ("\u0663", "\u0663", True), ("9" * 5000, "--target", False),
               (" ", "--target", False)]
    for k, (t, word, lead) in enumerate(targets):
        cs.append(cli(f"value-target-{k}", "values", 2, word, argv=lambda f, m, i, t=t: [m, i, "--target", t, "--out",
                                                                                        f / "out"], lead=lead))
    options = [("window=abc", "occlusion", "window", True), ("window=1e400", "occlusion", "window", True),
               ("window=" + "9" * 5000, "occlusion", "window", True),
               ("window=" + "[" * 5000 + "]" * 5000, "occlusion", "window", True),
               ("stride=-3", "occlusion", "stride", True), ("bogus=1", "fixations", "bogus", True),
               ("self=1", "occlusion", "--option", False), ("_x=1", "occlusion", "--option", False),
               ("noeq", "occlusion", "--option", False), ("a b=1", "occlusion", "--option", False),
               ("step=1", "occlusion", "--step", False), ("image=x", "occlusion", "--option", False)]
    for k, (opt, meth, word, lead) in enumerate(options):
        cs.append(cli(f"value-option-{k:02d}", "values", 2, word, lead=lead,
                      argv=lambda f, m, i, opt=opt, meth=meth: [m, i, "--method", meth, "--option", opt, "--out",
                                                                 f / "out"]))
    for k, meth in enumerate(["", "gradcam,nosuch", ",", "GRADCAM", "all,gradcam"]):
        cs.append(cli(f"value-method-{k}", "values", 2, "unknown method",
                      argv=lambda f, m, i, meth=meth: [m, i, "--method", meth, "--out", f / "out"]))
    cs.append(cli("value-abbreviated-flag", "values", 2, "unrecognized", argv=lambda f, m, i: [m, i, "--meth",
                                                                                                "gradcam"]))
    sub = [
        (["methods", "--bogus"], "--bogus"), (["inspect", "{m}", "--bogus"], "--bogus"),
        (["evaluate", "{m}", "{f}", "--limit", "0"], "--limit"),
        (["evaluate", "{m}", "{f}", "--top-fraction", "nan"], "--top-fraction"),
        (["evaluate", "{m}", "{f}", "--top-fraction", "0"], "--top-fraction"),
        (["evaluate", "{m}", "{f}", "--steps", "0"], "--steps"),
        (["evaluate", "{m}", "{f}", "--tolerance", "-1"], "--tolerance"),
        (["evaluate", "{m}", "{f}", "--occlusion-window", "0"], "--occlusion-window"),
        (["interpret", "{m}", "{f}", "--mu", "nan"], "--mu"), (["interpret", "{m}", "{f}", "--mu", "-1"], "--mu"),
        (["interpret", "{m}", "{f}", "--crops", "0"], "--crops"),
        (["interpret", "{m}", "{f}", "--seeds", "-1"], "--seeds"),
        (["view", "{m}", "{i}", "--activations", "--max-channels", "0"], "--max-channels"),
        (["view", "{m}", "{i}", "--filters", "--k", "0"], "--k"),
        (["impression", "{m}", "--target", "1", "--rotate", "nan"], "--rotate"),
        (["impression", "{m}", "--target", "1", "--jitter", "-5"], "--jitter"),
        (["impression", "{m}", "--target", "1", "--zoom", "0"], "--zoom"),
        (["impression", "{m}", "--target", "1", "--seed", "-1"], "--seed"),
        (["impression", "{m}", "--target", "1", "--lr", "0"], "--lr"),
        (["impression", "{m}", "--target", "1", "--steps", "0"], "--steps"),
        (["impression", "{m}", "--target", "1", "--scale-jitter", "1"], "--scale-jitter"),
        (["impression", "{m}", "--target", "\u00b2"], "\u00b2"),
    ]
    for k, (args, word) in enumerate(sub):
        cs.append(cli(f"value-sub-{args[0]}-{k:02d}", "values", 2, word,
                      argv=lambda f, m, i, args=args: [a.format(m=m, f=f, i=i) for a in args]))
    cs.append(cli("value-layer-on-fixations", "values", 2, "layer", lead=True,
                  argv=lambda f, m, i: [m, i, "--layer", "c1", "--out", f / "out"]))
    cs.append(cli("value-step-on-classifier", "values", 2, "step", lead=True,
                  argv=lambda f, m, i: [m, i, "--step", "0", "--out", f / "out"]))
    return cs


# -- 5. terminal safety ----------------------------------------------------------------------------------------------
ESC_LABELS = ["\x1b]2;pwned\x07", "\x1b[2J", "b\u202eevil", "line\nbreak", "\x9b31m"]


def _labelled(labels: list[str]) -> Callable[[], onnx.ModelProto]:
    def make() -> onnx.ModelProto:
        m = M.cnn()
        helper.set_model_props(m, {"onnxfix.labels": json.dumps(labels)})
        return m

    return make


def _terminal() -> list[Case2]:
    cs: list[Case2] = []

    def escaped(f: Path, argv: list[str], out: str, err: str) -> None:
        assert "\\x1b" in out or "\\x9b" in out or "\\u202e" in out, out

    cs.append(cli("term-metadata-labels", "terminal", 0, model=_labelled(ESC_LABELS),
                  argv=lambda f, m, i: [m, i, "--out", f / "out"], check=escaped))

    def labels_file(f: Path, m: Path, i: Path) -> list[str]:
        (f / "labels.txt").write_text("\n".join(["\x1b]0;title\x07", "\x1b[31mred", "\x07bell", "\x1bc", "ok"]))
        return [m, i, "--labels", f / "labels.txt", "--out", f / "out"]

    cs.append(cli("term-labels-file", "terminal", 0, argv=labels_file, check=escaped))
    cs.append(cli("term-labels-json-mode", "terminal", 0, model=_labelled(ESC_LABELS),
                  argv=lambda f, m, i: [m, i, "--out", f / "out", "--json"],
                  check=lambda f, a, out, err: [json.loads(x) for x in out.splitlines()]))
    for k, name in enumerate(["\x1b]2;pwn\x07.png", "new\nline.png", "bell\x07.png", "\u202egnp.exe.png",
                              "\x1b[2J\x1b[H.png"]):  # the last has '[': a pattern when no such file exists
        cs.append(cli(f"term-missing-image-name-{k}", "terminal", 2, "no image file matches" if "[" in name else
                      "no such image",
                      argv=lambda f, m, i, name=name: [m, f / name, "--out", f / "out"]))

    def odd_image(f: Path, m: Path, i: Path) -> list[str]:
        p = _photo(f, "odd\x1b[2Jname.png")
        return [m, p, "--out", f / "out"]

    cs.append(cli("term-image-name-in-output", "terminal", 0, argv=odd_image,
                  check=lambda f, a, out, err: None if "\\x1b[2J" in out else (_ for _ in ()).throw(
                      AssertionError(out))))
    cs.append(cli("term-model-name-missing", "terminal", 2, "no such",
                  argv=lambda f, m, i: [f / "m\x1b]2;x\x07.onnx", i, "--out", f / "out"]))
    cs.append(cli("term-target-label", "terminal", 2, "\\x1b",
                  argv=lambda f, m, i: [m, i, "--target", "\x1b[2Jzebra", "--out", f / "out"]))
    cs.append(cli("term-option-name", "terminal", 2, "--option",
                  argv=lambda f, m, i: [m, i, "--option", "\x1b[2J=1", "--out", f / "out"]))

    def non_utf8_name(f: Path, m: Path, i: Path) -> list[str]:
        p = os.fsencode(str(f)) + b"/bad\xff.png"
        with open(p, "wb") as fh:
            fh.write(I.encode(Image.fromarray(I.pixels()), "PNG"))
        return [m, os.fsdecode(p), "--out", f / "out"]

    cs.append(cli("term-undecodable-file-name", "terminal", 0, argv=non_utf8_name,
                  check=lambda f, a, out, err: None if "\\udcff" in out else (_ for _ in ()).throw(
                      AssertionError(out))))

    def inspect_names() -> onnx.ModelProto:
        m = M.cnn()
        m.graph.output[0].name = "prob\x1b]2;x\x07"
        M.node(m, "softmax").output[0] = "prob\x1b]2;x\x07"
        return m

    cs.append(cli("term-inspect-tensor-names", "terminal", 0, model=inspect_names, argv=lambda f, m, i: ["inspect", m],
                  new=()))

    def evaluate_names(f: Path, m: Path, i: Path) -> list[str]:
        d = f / "ds"
        _photo(d, "ok.png")
        rows = [{"file": "ok.png", "label": 0}, {"file": "gone\x1b[2J.png", "label": 0}]
        (d / "annotations.json").write_text(json.dumps({"images": rows}))
        return ["evaluate", m, d, "--methods", "gradcam", "--metrics", "pointing", "--no-chart", "--out", f / "out"]

    cs.append(cli("term-evaluate-skipped-names", "terminal", 0, argv=evaluate_names, new=("out/*",),
                  check=lambda f, a, out, err: None if "\\x1b[2J" in err else (_ for _ in ()).throw(
                      AssertionError(err))))
    return cs


# -- 6. resources ----------------------------------------------------------------------------------------------------
def _resources() -> list[Case2]:
    cs: list[Case2] = []

    def labels(make: Callable[[Path], Any]):
        def argv(f: Path, m: Path, i: Path) -> list[str]:
            p = make(f)
            return [m, i, "--labels", p, "--out", f / "out"]

        return argv

    def fifo(f: Path) -> Path:
        os.mkfifo(f / "labels.fifo")
        return f / "labels.fifo"

    def write(name: str, data: bytes):
        def make(f: Path) -> Path:
            (f / name).write_bytes(data)
            return f / name

        return make

    cs.append(cli("res-labels-fifo", "resources", 2, "FIFO", argv=labels(fifo)))
    cs.append(cli("res-labels-dev-zero", "resources", 2, "character device", argv=labels(lambda f: "/dev/zero")))
    cs.append(cli("res-labels-folder", "resources", 2, "folder", argv=labels(lambda f: f)))
    cs.append(cli("res-labels-17MB", "resources", 2, "above the limit",
                  argv=labels(write("big.txt", b"x\n" * (17 * 1024**2 // 2)))))
    cs.append(cli("res-labels-huge-index", "resources", 2, "300000000", argv=labels(write("l.json",
                                                                                        b'{"300000000": "x"}'))))
    cs.append(cli("res-labels-deep-json", "resources", 2, "nested",
                  argv=labels(write("l.json", b"[" * 100000 + b"]" * 100000))))
    cs.append(cli("res-labels-too-few", "resources", 2, "4 labels", argv=labels(write("l.txt", b"a\nb\nc\nd\n"))))
    cs.append(cli("res-labels-too-many", "resources", 2, "6 labels",
                  argv=labels(write("l.txt", b"a\nb\nc\nd\ne\nf\n"))))
    cs.append(cli("res-labels-not-utf8", "resources", 2, "UTF-8", argv=labels(write("l.txt", b"a\n\xff\xfe\nc\n"))))
    cs.append(cli("res-labels-nested-values", "resources", 2, "labels",
                  argv=labels(write("l.json", b'[["a"], "b", "c", "d", "e"]'))))
    cs.append(cli("res-metadata-labels-huge-key", "resources", 2, "class index",
                  model=lambda: _labelled_raw('{"99999999999": "x"}'), argv=lambda f, m, i: [m, i, "--out", f / "out"]))
    cs.append(cli("res-declared-input-4096-budget", "resources", 2, "memory budget", "--size", lead=True,
                  model=lambda: M.cnn(shape=(1, 3, 4096, 4096), head="gap"),
                  argv=lambda f, m, i: [m, i, "--memory-budget-mb", "50", "--out", f / "out"]))
    cs.append(cli("res-declared-input-16384-default", "resources", 2, "memory budget",
                  model=lambda: M.cnn(shape=(1, 3, 16384, 16384), head="gap"),
                  argv=lambda f, m, i: [m, i, "--out", f / "out"], patch=lambda f: _small_memory()))

    def eval_ann(name: str, make: Callable[[Path], None]):
        def argv(f: Path, m: Path, i: Path) -> list[str]:
            d = f / "ds"
            d.mkdir()
            _photo(d, "a.png")
            make(d / name)
            return ["evaluate", m, d, "--methods", "gradcam", "--metrics", "pointing", "--out", f / "out"]

        return argv

    cs.append(cli("res-annotations-fifo", "resources", 2, "FIFO", argv=eval_ann("annotations.json", os.mkfifo)))
    cs.append(cli("res-annotations-dev-zero", "resources", 2, "character device",
                  argv=eval_ann("annotations.csv", lambda p: os.symlink("/dev/zero", p))))
    cs.append(cli("res-annotations-deep", "resources", 2, "nested",
                  argv=eval_ann("annotations.json", lambda p: p.write_bytes(b'{"images": ' + b"[" * 50000 +
                                                                            b"]" * 50000 + b"}"))))
    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
              b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><annotation><filename>a.png</filename><object><name>'
              b'&lol3;</name></object></annotation>')
    cs.append(cli("res-annotations-xml-entities", "resources", 2, "no image left",
                  argv=eval_ann("a.xml", lambda p: p.write_bytes(laughs))))
    return cs


def _labelled_raw(text: str) -> onnx.ModelProto:
    m = M.cnn()
    helper.set_model_props(m, {"onnxfix.labels": text})
    return m


@contextlib.contextmanager
def _small_memory():
    import onnxfix.runtime as rt

    real = rt.available_memory
    rt.available_memory = lambda: 512 * 1024**2  # type: ignore[assignment]
    try:
        yield
    finally:
        rt.available_memory = real  # type: ignore[assignment]


# -- 7. silently wrong answers ---------------------------------------------------------------------------------------
def _wrong() -> list[Case2]:
    cs: list[Case2] = []
    cs.append(cli("wrong-metadata-labels-string", "wrong", 2, "onnxfix.labels", "string",
                  model=lambda: _labelled_raw('"abcde"'), argv=lambda f, m, i: [m, i, "--out", f / "out"]))
    cs.append(cli("wrong-metadata-labels-number", "wrong", 2, "onnxfix.labels",
                  model=lambda: _labelled_raw("12345"), argv=lambda f, m, i: [m, i, "--out", f / "out"]))
    cs.append(cli("wrong-metadata-labels-invalid-json", "wrong", 2, "onnxfix.labels", "JSON",
                  model=lambda: _labelled_raw("[a, b"), argv=lambda f, m, i: [m, i, "--out", f / "out"]))

    def names_are(*want: str):
        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            (d,) = _json_lines(out)
            got = {t["index"]: t["label"] for t in d["top"]}
            for k, v in enumerate(want):
                assert got.get(k, v) == v, (got, want)

        return check

    cs.append(cli("wrong-metadata-labels-dict", "wrong", 0,
                  model=lambda: _labelled_raw('{"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four"}'),
                  argv=lambda f, m, i: [m, i, "--out", f / "out", "--json"],
                  check=names_are("zero", "one", "two", "three", "four")))

    def evaluate_row(row: dict, reason: str):
        def argv(f: Path, m: Path, i: Path) -> list[str]:
            d = f / "ds"
            _photo(d, "ok.png")
            _photo(d, "bad.png", seed=3)
            rows = [{"file": "ok.png", "label": 0, "boxes": [[1, 1, 10, 10]]}, {"file": "bad.png", **row}]
            (d / "annotations.json").write_text(json.dumps({"images": rows}))
            return ["evaluate", m, d, "--methods", "gradcam", "--metrics", "pointing", "--no-chart", "--out",
                    f / "out"]

        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            assert reason in err, err
            summary = json.loads((f / "out" / "model.ds.json").read_text())
            assert summary["images"] == 1 and len(summary["skipped"]) == 1, summary

        return argv, check

    for k, (row, reason) in enumerate([
            ({"label": 1, "boxes": ["0355"]}, "not four finite numbers"),
            ({"label": 1, "boxes": [[True, 0, 5, 5]]}, "not four finite numbers"),
            ({"label": 1, "boxes": "0 0 5 5"}, "not a list of boxes"),
            ({"label": 1, "boxes": [[0, 0, "nan", 5]]}, "not four finite numbers"),
            ({"label": 1, "boxes": [[0, 0, 1e400, 5]]}, "not four finite numbers"),
            ({"label": 1, "boxes": [[0, 0, 5]]}, "not four finite numbers"),
            ({"label": 1, "accept": ["\u00b2"]}, "not a class index"),
            ({"label": "9" * 40}, "no label"),
            ({"label": 1, "accept": 3}, "accept is not a list")]):
        argv, check = evaluate_row(row, reason)
        cs.append(cli(f"wrong-evaluate-row-{k}", "wrong", 0, argv=argv, check=check, new=("out/*",)))

    def exif_frames(f: Path) -> Callable[[], None]:
        def run() -> None:
            from onnxfix.evaluate.dataset import load_dataset
            from onnxfix.evaluate.runner import Evaluator
            from onnxfix.io.image import decode_image

            d = f / "ds"
            d.mkdir()
            stored = np.zeros((20, 30, 3), np.uint8)
            stored[3:9, 4:14] = 255  # the object, in the stored pixel grid; its box [4, 3, 14, 9]
            for o in (1, 3, 6, 8):
                (d / f"o{o}.jpg").write_bytes(I.jpeg_with_orientation(stored, o))
            rows = [{"file": f"o{o}.jpg", "label": 0, "boxes": [[4, 3, 14, 9]]} for o in (1, 3, 6, 8)]
            (d / "annotations.json").write_text(json.dumps({"images": rows}))
            ds = load_dataset(d)
            assert not ds.skipped, ds.skipped
            for it in ds.items:
                upright = np.asarray(decode_image(it.path))[..., 0] > 128  # what the model and the map see
                region, boxes = Evaluator._region(it, upright.shape)
                assert (region == upright).mean() > 0.97, (it.file, it.boxes)
                assert it.size == (upright.shape[1], upright.shape[0])

        return run

    cs.append(api("wrong-evaluate-exif-one-frame", "wrong", 0, run=exif_frames))
    return cs


# -- 8. in-memory models and external data ---------------------------------------------------------------------------
def _external() -> list[Case2]:
    cs: list[Case2] = []
    good = M.fw_bytes()

    def proto(loc: str, setup=None):
        def run_for(f: Path, use_base: bool, via: str = "validate", **kw: Any) -> Callable[[], Any]:
            def run() -> None:
                d = f / "m"
                d.mkdir(exist_ok=True)
                (f / "secret.bin").write_bytes(good)
                if setup:
                    setup(f, d)
                m = M.with_external(str(f / "secret.bin") if loc == "{abs}" else loc)
                before = m.SerializeToString()
                if via == "explainer":
                    from onnxfix import Explainer

                    Explainer(m)
                    return
                from onnxfix.io.model import validate

                got = validate(m, "mem", base_dir=d if use_base else None, **kw)
                assert m.SerializeToString() == before, "the caller's proto must not change"
                assert not any(t.data_location == TensorProto.EXTERNAL for t in got.graph.initializer)

            return run

        return run_for

    def put(name: str):
        return lambda f, d: (d / name).write_bytes(good)

    cs.append(api("ext-memory-no-base-explainer", "external", 2, "came from memory", "base_dir",
                  run=lambda f: proto("weights.bin", put("weights.bin"))(f, False, "explainer")))
    cs.append(api("ext-memory-absolute-explainer", "external", 2, "came from memory",
                  run=lambda f: proto("{abs}")(f, False, "explainer")))
    cs.append(api("ext-memory-no-base", "external", 2, "came from memory",
                  run=lambda f: proto("weights.bin", put("weights.bin"))(f, False)))
    cs.append(api("ext-memory-base-ok", "external", 0, run=lambda f: proto("weights.bin", put("weights.bin"))(f, True)))
    cs.append(api("ext-memory-base-dotdot", "external", 2, "leaves the model's folder",
                  run=lambda f: proto("../secret.bin")(f, True)))
    cs.append(api("ext-memory-base-absolute", "external", 2, "absolute", run=lambda f: proto("{abs}")(f, True)))
    cs.append(api("ext-memory-base-missing", "external", 2, "missing", run=lambda f: proto("absent.bin")(f, True)))
    cs.append(api("ext-memory-base-symlink-out", "external", 2, "refused",
                  run=lambda f: proto("l.bin", lambda f, d: os.symlink(f / "secret.bin", d / "l.bin"))(f, True)))
    cs.append(api("ext-memory-base-too-big", "external", 2, "above the limit",
                  run=lambda f: proto("weights.bin", put("weights.bin"))(f, True, max_bytes=100)))
    return cs


# -- 9. inputs: folders, patterns, --method all ----------------------------------------------------------------------
def _inputs() -> list[Case2]:
    cs: list[Case2] = []

    def tree(f: Path) -> Path:
        d = f / "imgs"
        _photo(d, "b.png", seed=2)
        _photo(d, "a.PNG", seed=3)
        _photo(d / "sub", "c.jpg", seed=4)
        _photo(d / ".hidden", "h.png", seed=5)
        _photo(d, ".dot.png", seed=6)
        (d / "notes.txt").write_text("not an image")
        (d / "sub" / "data.bin").write_bytes(b"\0" * 10)
        return d

    def outputs(*names: str, order: tuple[str, ...] = ()):
        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            got = sorted(p.name for p in (f / "out").glob("*.png"))
            assert got == sorted(names), got
            if order:
                seen = [Path(d["image"]).name for d in _json_lines(out)]
                assert seen == list(order), seen

        return check

    abc = ("a.fixations.png", "b.fixations.png", "c.fixations.png")
    cs.append(cli("inputs-folder-recursive", "inputs", 0, argv=lambda f, m, i: [m, tree(f), "--out", f / "out",
                                                                                  "--json"],
                  check=outputs(*abc, order=("a.PNG", "b.png", "c.jpg"))))
    cs.append(cli("inputs-pattern", "inputs", 0, argv=lambda f, m, i: [m, str(tree(f)) + "/*.png", "--out",
                                                                         f / "out"],
                  check=outputs("b.fixations.png")))
    cs.append(cli("inputs-pattern-recursive", "inputs", 0,
                  argv=lambda f, m, i: [m, str(tree(f)) + "/**/*.jpg", "--out", f / "out"],
                  check=outputs("c.fixations.png")))
    cs.append(cli("inputs-pattern-folders", "inputs", 0, argv=lambda f, m, i: [m, str(tree(f)) + "/s*", "--out",
                                                                                 f / "out"],
                  check=outputs("c.fixations.png")))
    cs.append(cli("inputs-pattern-no-match", "inputs", 2, "no image file matches",
                  argv=lambda f, m, i: [m, str(f) + "/*.nothing", "--out", f / "out"]))

    def empty(f: Path, m: Path, i: Path) -> list[str]:
        (f / "empty" / "sub").mkdir(parents=True)
        (f / "empty" / "x.txt").write_text("x")
        return [m, f / "empty", "--out", f / "out"]

    cs.append(cli("inputs-empty-folder", "inputs", 2, "holds no image files", argv=empty))

    def out_inside(f: Path, m: Path, i: Path) -> list[str]:
        d = tree(f)
        _photo(d / "out", "old.fixations.png")
        return [m, d, "--out", d / "out"]

    def not_reexplained(f: Path, argv: list[str], out: str, err: str) -> None:
        got = sorted(p.name for p in (f / "imgs" / "out").glob("*.png"))
        assert got == sorted([*abc, "old.fixations.png"]), got

    cs.append(cli("inputs-out-inside-folder-excluded", "inputs", 0, argv=out_inside, check=not_reexplained,
                  new=("imgs/out/*.png",)))

    def loop(f: Path, m: Path, i: Path) -> list[str]:
        d = tree(f)
        os.symlink(d, d / "sub" / "loop")
        return [m, d, "--out", f / "out"]

    cs.append(cli("inputs-symlink-loop", "inputs", 0, argv=loop, check=outputs(*abc)))

    def named_file(f: Path, m: Path, i: Path) -> list[str]:
        p = f / "photo.dat"
        p.write_bytes(i.read_bytes())
        return [m, p, "--out", f / "out"]

    cs.append(cli("inputs-named-file-any-extension", "inputs", 0, argv=named_file,
                  check=outputs("photo.fixations.png")))
    cs.append(cli("inputs-method-list", "inputs", 0, argv=lambda f, m, i: [m, i, "--method", "fixations, occlusion",
                                                                             "--out", f / "out"],
                  check=outputs("photo.fixations.png", "photo.occlusion.png")))

    def skipped(*methods: str):
        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            for meth in methods:
                assert f"skipped {meth}" in err, err
            for line in err.splitlines():
                assert re.match(r"onnxfix: skipped \S+( on .*)?: .+", line), line
            assert (f / "out" / "photo.all.png").is_file()

        return check

    cs.append(cli("inputs-all-dynamic-hw", "inputs", 0, model=lambda: M.cnn(shape=("N", 3, "H", "W"), head="gap"),
                  argv=lambda f, m, i: [m, i, "--method", "all", "--out", f / "out"], check=skipped()))
    cs.append(cli("inputs-all-skips-a-failing-method", "inputs", 0,
                  argv=lambda f, m, i: [m, i, "--method", "all", "--out", f / "out"],
                  patch=lambda f: _failing("saliency"), check=skipped("saliency")))
    cs.append(cli("inputs-all-with-layer", "inputs", 0, lead=True,
                  argv=lambda f, m, i: [m, i, "--method", "all", "--layer", "r1", "--out", f / "out"],
                  check=skipped("fixations", "saliency")))
    cs.append(cli("inputs-all-every-method-fails", "inputs", 2, "out of range",
                  argv=lambda f, m, i: [m, i, "--method", "all", "--target", "9", "--out", f / "out"]))
    return cs


@contextlib.contextmanager
def _failing(method: str):
    from onnxfix.errors import UnsupportedModel
    from onnxfix.methods import METHODS

    m = METHODS[method]
    cls = m if isinstance(m, type) else type(m)

    def boom(*a: Any, **k: Any) -> Any:
        raise UnsupportedModel(f"{method} cannot take this model (test)")

    real = cls.attribute
    cls.attribute = boom
    try:
        yield
    finally:
        cls.attribute = real


# -- 10. boxes hold their map's peak ---------------------------------------------------------------------------------
def _box() -> list[Case2]:
    cs: list[Case2] = []

    def peak_inside(method: str, rule: str):
        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            from onnxfix import Explainer

            (d,) = _json_lines(out)
            assert d["box_rule"] == rule, d.get("box_rule")
            e = Explainer(str(argv[0])).explain(argv[1], method=method)
            if d["box"] is not None and rule == "peak-component":
                py, px = np.unravel_index(int(np.argmax(e.heatmap)), e.heatmap.shape)
                x0, y0, x1, y1 = d["box"]
                assert x0 - 0.01 <= px <= x1 + 0.01 and y0 - 0.01 <= py <= y1 + 0.01, (d["box"], (px, py))

        return check

    for method in ("gradcam", "occlusion", "saliency", "gradcam++", "cam"):
        cs.append(cli(f"box-holds-peak-{method}", "box", 0, model=lambda: M.cnn(head="gap"),
                      argv=lambda f, m, i, method=method: [m, i, "--method", method, "--json", "--out", f / "out"],
                      check=peak_inside(method, "peak-component")))
    cs.append(cli("box-rule-fixations", "box", 0, argv=lambda f, m, i: [m, i, "--json", "--out", f / "out"],
                  check=peak_inside("fixations", "fixation-inliers")))

    def strip_and_cup(f: Path) -> Callable[[], None]:
        def run() -> None:
            from onnxfix.maps import heatmap_box

            m = np.zeros((400, 600), np.float32)
            m[227:, :] = 0.3  # a broad weak strip: the largest component
            m[150:200, 320:360] = 1.0  # the peak, apart from it
            peak = heatmap_box(m)
            assert peak is not None and peak[0] >= 300 and peak[3] <= 210, peak
            assert heatmap_box(m, rule="largest") == [0.0, 226.90058479532163, 599.0, 399.0]

        return run

    cs.append(api("box-peak-vs-largest-rule", "box", 0, run=strip_and_cup))
    return cs


# -- 11. smaller ones ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _small() -> list[Case2]:
    cs: list[Case2] = []

    def mode_is(mode: int):
        def check(f: Path, argv: list[str], out: str, err: str) -> None:
            for p in (f / "out").glob("*.png"):
                assert (p.stat().st_mode & 0o777) == mode, oct(p.stat().st_mode)

        return check

    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        cs.append(cli(f"small-umask-{mask:03o}", "small", 0, argv=lambda f, m, i: [m, i, "--out", f / "out"],
                      patch=lambda f, mask=mask: _umask(mask), check=mode_is(mode)))

    def big_in_dataset(f: Path, m: Path, i: Path) -> list[str]:
        d = f / "ds"
        _photo(d, "ok.png")
        (d / "big.png").write_bytes(I.png_header_only(10000, 9500))  # between Pillow's warning and our limit
        rows = [{"file": "ok.png", "label": 0}, {"file": "big.png", "label": 1}]
        (d / "annotations.json").write_text(json.dumps({"images": rows}))
        return ["evaluate", m, d, "--methods", "gradcam", "--metrics", "pointing", "--no-chart", "--out", f / "out"]

    cs.append(cli("small-no-bomb-warning-in-evaluate", "small", 0, argv=big_in_dataset, new=("out/*",),
                  check=lambda f, a, out, err: None if "Warning" not in err else (_ for _ in ()).throw(
                      AssertionError(err))))
    cs.append(cli("small-version", "small", 0, argv=lambda f, m, i: ["--version"], new=(),
                  check=lambda f, a, out, err: None if out.startswith("onnxfix ") else (_ for _ in ()).throw(
                      AssertionError(out))))

    def lists_commands(f: Path, argv: list[str], out: str, err: str) -> None:
        for name in ("evaluate", "interpret", "view", "impression", "inspect", "methods", "batch", "export",
                     "serve", "help"):
            assert f"\n  {name} " in out, (name, out)

    cs.append(cli("small-help-lists-commands", "small", 0, argv=lambda f, m, i: ["--help"], new=(),
                  check=lists_commands))
    cs.append(cli("small-help-command", "small", 0, argv=lambda f, m, i: ["help", "view"], new=()))
    cs.append(cli("small-help-explain", "small", 0, argv=lambda f, m, i: ["help", "explain"], new=()))
    cs.append(cli("small-help-unknown", "small", 2, "no command", argv=lambda f, m, i: ["help", "nosuch"]))
    cs.append(cli("small-no-arguments", "small", 2, "no model given", argv=lambda f, m, i: []))
    cs.append(cli("small-methods-lists-options", "small", 0, argv=lambda f, m, i: ["methods"], new=(),
                  check=lambda f, a, out, err: None if "occlusion" in out else (_ for _ in ()).throw(
                      AssertionError(out))))
    return cs


def cases() -> list[Case2]:
    """Every round-2 case (cheap: files are written only by ``build``)."""
    out = (_concurrency() + _overwrite() + _os_errors() + _values() + _terminal() + _resources() + _wrong()
           + _external() + _inputs() + _box() + _small())
    ids = [c.id for c in out]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    return out


def summary() -> str:
    """Cases per class (for docs/robustness.md and the issue's closing note)."""
    import collections

    n = collections.Counter(c.cls for c in cases())
    return "\n".join(f"| {k} | {n[k]} |" for k in CLASSES) + f"\n| **all** | {sum(n.values())} |"


if __name__ == "__main__":
    print(summary())
