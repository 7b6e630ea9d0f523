"""Pipelines behind the command line, usable from Python: inputs in (files, folders, globs), pictures out.

    >>> from onnxfix.pipeline import explain_files
    >>> results = explain_files("model.onnx", ["photos/"], methods="gradcam,fixations", out="maps")
    >>> [(r.image, r.method, r.png) for r in results]

* **Inputs** (:func:`collect_inputs`): a file is taken as given (whatever its extension: the user named it); a
  folder is walked recursively — image extensions only (:data:`IMAGE_EXTS`, any case), hidden files and folders
  and the output folder left out, symbolic links to folders not followed — in sorted order; a pattern the shell did
  not expand (``"photos/*.jpg"``, ``"data/**/*.png"``) is expanded here, sorted. A folder without images or a
  pattern matching nothing is an :class:`~onnxfix.errors.InputError`.
* **Methods**: one name, a comma list (``"gradcam,fixations"``) or ``"all"``: every method that applies to the
  model; the others are reported as skipped with the reason (:class:`Skip`), and a method that turns out not to
  work on the model at run time (e.g. a dynamic input size the gradient engine cannot take) is skipped from then
  on. Named methods must all work: the first failure stops the run.
* **Outputs** follow the output policy of every subcommand (docs/robustness.md): ``out`` is a folder; names are
  ``<image stem>.<method>.png`` (``<stem>.all.png`` for the ``all`` panel, ``<stem>.textual.png``); an existing
  file is never replaced — the next free name (``<stem>-2.<method>.png``…) is claimed atomically — unless
  ``overwrite``; an input is never replaced; files get the user's umask.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from onnxfix.errors import InputError, OnnxfixError, UnsupportedModel, printable

#: File extensions taken from folders and patterns (compared case-insensitively).
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
                        ".ppm", ".pgm", ".pbm", ".pnm"})
_GLOB_CHARS = frozenset("*?[")


def is_image_name(path: str | os.PathLike) -> bool:
    """True when ``path`` has an image extension (:data:`IMAGE_EXTS`)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTS


def _walk(folder: str, exclude: list[str]) -> list[str]:
    found: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        real = os.path.realpath(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(root, d)) not in exclude)
        if real in exclude:
            continue
        for f in sorted(files):
            p = os.path.join(root, f)
            if not f.startswith(".") and is_image_name(f) and os.path.isfile(p):
                found.append(p)
    return sorted(found, key=lambda p: Path(p).parts)


def collect_inputs(items: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()) -> list[str]:
    """The image files that ``items`` name: files as given, folders walked, unexpanded patterns expanded.

    Parameters
    ----------
    items : iterable of paths or patterns
    exclude : iterable of folders
        Left out of folder walks (the output folder, so a rerun does not explain its own outputs).

    Raises
    ------
    InputError
        A folder holds no image file, or a pattern matches nothing.
    """
    skip = [os.path.realpath(os.fspath(e)) for e in exclude]
    out: list[str] = []
    for item in items:
        s = os.fspath(item)
        if os.path.isdir(s):
            found = _walk(s, skip)
            if not found:
                raise InputError(f"{printable(s)}: the folder holds no image files "
                                 f"({', '.join(sorted(IMAGE_EXTS))})")
            out.extend(found)
        elif os.path.lexists(s) or not (_GLOB_CHARS & set(s)):
            out.append(s)  # a file, or a missing name the decoder reports
        else:
            matches = sorted(glob.glob(s, recursive=True))
            found = []
            for m in matches:
                if os.path.isdir(m):
                    found.extend(_walk(m, skip))
                elif is_image_name(m) and os.path.isfile(m):
                    found.append(m)
            if not found:
                raise InputError(f"{printable(s)}: no image file matches this pattern")
            out.extend(found)
    if not out:
        raise InputError("no input images given")
    return out


def parse_methods(text: str | Sequence[str], known: Iterable[str]) -> tuple[list[str], bool]:
    """``"a,b"`` / ``["a", "b"]`` / ``"all"`` → (method names, whether it was ``all``); unknown names refused."""
    known = list(known)
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t and t.strip()]
    if [n.lower() for n in names] == ["all"]:
        return known, True
    bad = [n for n in names if n not in known]
    if bad or not names:
        shown = ", ".join(repr(printable(b)[:60]) for b in bad) or repr(printable(str(text))[:60])
        raise InputError(f"unknown method {shown}; choose from {', '.join(known)}, or all (a comma list works: "
                         "gradcam,fixations)")
    return list(dict.fromkeys(names)), False


@dataclass
class Result:
    """One image × method: the explanation and the PNG that holds its picture."""

    image: str
    method: str
    explanation: Any
    png: Path | None
    textual_png: Path | None = None

    def to_json(self, model: str) -> dict[str, Any]:
        """The CLI's JSON object: :meth:`Explanation.to_json` plus ``box_rule`` (and ``textual_png``)."""
        from onnxfix.maps import box_rule

        e = self.explanation
        d = e.to_json(self.image, model, None if self.png is None else str(self.png))
        d.setdefault("box_rule", box_rule(e.points))
        if self.textual_png is not None:
            d["textual_png"] = str(self.textual_png)
        return d


@dataclass
class Skip:
    """A method left out: for every image (``image`` None) or for one image, and why."""

    method: str
    reason: str
    image: str | None = None

    def __str__(self) -> str:
        where = f" on {printable(self.image)}" if self.image is not None else ""
        return f"skipped {self.method}{where}: {printable(self.reason)}"


@dataclass
class Progress:
    """A one-line progress bar on a terminal stream (nothing when not ``enabled``)."""

    total: int
    enabled: bool
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def step(self, text: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        frac = self.done / max(1, self.total)
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done) if self.done else 0.0
        bar = "#" * int(round(frac * width))
        try:
            self.stream.write(f"\r[{bar:<{width}}] {self.done}/{self.total} {el:5.0f}s eta {eta:4.0f}s "
                              f"{printable(text)[:40]:<40}")
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def close(self) -> None:
        if self.enabled and self.done:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


def _stem(image: str) -> str:
    return Path(image).stem or "image"


def iter_explain_files(explainer: Any, inputs: Sequence[str], methods: str | Sequence[str] = "fixations",
                       out: str | os.PathLike = ".", *, model_path: str | os.PathLike | None = None,
                       target: Any = None, layer: str | None = None, step: int | None = None, top_k: int = 5,
                       options: dict[str, Any] | None = None, overwrite: bool = False, textual: bool = False,
                       write: bool = True, progress: bool = False) -> Iterator[Result | Skip]:
    """Explain ``inputs`` (image files, already collected) with ``methods``; yield a :class:`Result` per image ×
    method as soon as its PNG is written, and a :class:`Skip` for each method left out (``"all"`` only).

    See :func:`explain_files` for the parameters.
    """
    from onnxfix.io.atomic import numbered, write_new
    from onnxfix.methods import METHODS
    from onnxfix.render import panel, png_writer

    names, every = parse_methods(methods, METHODS)
    if textual and "gradcam" not in names:
        raise InputError("--textual is Grad-CAM's textual explanation; use it with --method gradcam")
    if every:
        reasons = explainer.methods()
        for n in names:
            if reasons.get(n) is not None:
                yield Skip(n, str(reasons[n]))
        names = [n for n in names if reasons.get(n) is None]
        if not names:
            raise UnsupportedModel("no method applies to this model; see 'onnxfix inspect'")
    folder = Path(out)
    protect = [p for p in (model_path, *inputs) if p is not None]
    used: set[Path] = set()
    opts = dict(options or {})
    bar = Progress(total=len(inputs), enabled=progress and len(inputs) > 1)
    dropped: set[str] = set()

    def save(picture: Any, stem: str, tail: str) -> Path | None:
        if not write:
            return None
        return write_new((folder / n for n in numbered(stem, tail)), png_writer(picture), protect=protect,
                         overwrite=overwrite, used=used)

    try:
        for image in inputs:
            stem = _stem(image)
            results: list[Result] = []
            pending: list[Skip] = []  # reported when the image gives a result (else its first error is raised)
            first_error: OnnxfixError | None = None
            for m in names:
                if m in dropped:
                    continue
                kw = dict(opts)
                if textual and m == "gradcam":
                    kw["textual"] = True
                try:
                    e = explainer.explain(image, method=m, target=target, layer=layer, step=step, top_k=top_k,
                                          **kw)
                except OnnxfixError as exc:
                    if not every:
                        raise
                    first_error = first_error or exc
                    if isinstance(exc, UnsupportedModel):
                        dropped.add(m)
                        pending.append(Skip(m, str(exc)))
                    else:
                        pending.append(Skip(m, str(exc), image))
                    continue
                except MemoryError:
                    if not every:
                        raise
                    dropped.add(m)  # e.g. a method whose work grows with a dynamic input size
                    pending.append(Skip(m, "out of memory on this model (see --memory-budget-mb)"))
                    continue
                results.append(Result(str(image), m, e, None))
            if not results:
                if first_error is not None:
                    raise first_error
                raise UnsupportedModel("no method works on this model; see 'onnxfix inspect'")
            yield from pending
            if every:
                png = save(panel([r.explanation.render() for r in results]), stem, ".all.png")
                for r in results:
                    r.png = png
            else:
                for r in results:
                    r.png = save(r.explanation.render(), stem, f".{r.method}.png")
            if textual:
                from onnxfix.methods.textual import textual_panel

                for r in results:
                    if "textual" in r.explanation.extras:
                        r.textual_png = save(textual_panel(r.explanation), stem, ".textual.png")
            yield from results
            bar.step(str(image))
    finally:
        bar.close()


def explain_files(model: Any, inputs: str | os.PathLike | Sequence[str | os.PathLike],
                  methods: str | Sequence[str] = "fixations", out: str | os.PathLike = ".", *, target: Any = None,
                  layer: str | None = None, step: int | None = None, top_k: int = 5,
                  options: dict[str, Any] | None = None, overwrite: bool = False, textual: bool = False,
                  write: bool = True, progress: bool = False, skipped: list[Skip] | None = None,
                  **explainer_args: Any) -> list[Result]:
    """Explain image files, folders or patterns with one or more methods and write the pictures.

    Parameters
    ----------
    model : path, onnx.ModelProto or Explainer
        The model (``explainer_args`` go to :class:`onnxfix.Explainer` when it is not an Explainer already).
    inputs : path, folder or pattern, or a list of them
        See :func:`collect_inputs`.
    methods : str or list of str
        One name, a comma list, or ``"all"`` (those that apply; the rest are reported in ``skipped``).
    out : path
        The output folder (created when missing).
    target, layer, step, top_k, options
        As for :meth:`onnxfix.Explainer.explain` (``options``: the method's typed options, values may be text).
    overwrite : bool
        Replace existing files of the same name (never an input).
    textual : bool
        Grad-CAM's textual explanation panel as ``<stem>.textual.png`` (with gradcam).
    write : bool
        False: explain only, write no PNG (``Result.png`` is None).
    progress : bool
        A progress bar on stderr when there is more than one image.
    skipped : list, optional
        Receives a :class:`Skip` for each method left out.

    Returns
    -------
    list of Result
        In input order, methods in the order given.
    """
    from onnxfix.api import Explainer

    ex = model if isinstance(model, Explainer) else Explainer(model, **explainer_args)
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    files = collect_inputs(items, exclude=[out])
    model_path = None if isinstance(model, Explainer) or not isinstance(model, str | os.PathLike) else model
    results: list[Result] = []
    for ev in iter_explain_files(ex, files, methods, out, model_path=model_path, target=target, layer=layer,
                                 step=step, top_k=top_k, options=options, overwrite=overwrite, textual=textual,
                                 write=write, progress=progress):
        if isinstance(ev, Skip):
            if skipped is not None:
                skipped.append(ev)
        else:
            results.append(ev)
    return results


def out_candidates(out: str | os.PathLike | None, stem: str, tail: str,
                   protect: Iterable[str | os.PathLike] = (), default: str | os.PathLike = ".") -> Iterator[Path]:
    """Candidate output names under the output policy: ``FOLDER/<stem><tail>``, ``FOLDER/<stem>-2<tail>``…

    ``out`` is a folder (created when missing; ``None``: ``default``). Kept for scripts: a name ending in the
    output's extension (``--out f.png`` for a PNG) that is not a folder names the file itself (then ``f-2.png``…
    when it exists). An ``out`` that is an existing file of another kind, or one of the inputs, is refused.
    """
    from onnxfix.io.atomic import numbered

    ext = Path(tail).suffix.lower()
    if out is None:
        folder = Path(default)
        return (folder / n for n in numbered(stem, tail))
    text = os.fspath(out)
    p = Path(text)
    if p.is_dir() or text.endswith(("/", os.sep)):
        return (p / n for n in numbered(stem, tail))
    if os.path.lexists(p):
        if any(_same(p, x) for x in protect):
            raise InputError(f"{printable(text)}: refusing to write over an input file (--out names a folder)")
        if p.suffix.lower() != ext:
            raise InputError(f"{printable(text)}: --out must be a folder, and this is a file (refusing to replace "
                             "it)")
    if p.suffix.lower() == ext and ext:
        base = p.name[: -len(p.suffix)]
        return (p.parent / n for n in numbered(base, p.suffix))
    return (p / n for n in numbered(stem, tail))


def _same(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False
