"""One chunk of work, wherever it runs (the local process, a local worker process, a Dask worker).

A chunk is a list of images; it becomes one part file (one row group) of the results table. Inside a chunk the
images are read, hashed and preprocessed in a thread pool a batch ahead while ONNX Runtime explains the current
batch (``Explainer.explain(list, batch_size=B)``). Each process keeps one :class:`~onnxfix.api.Explainer` per
model and settings (:func:`get_explainer`, a module-level cache: built on a worker's first chunk, never per image).

Stored map: the explanation's heatmap in the **model-input frame** (what ``Explanation.heatmap`` is for a
preprocessed input: [0, 1], the model's input H×W, which covers the whole image because onnxfix resizes without
cropping), resized bilinearly to at most ``map_size`` (never upsampled) and stored as float16. Points and box are
mapped to the image's pixels (``Frame.to_image``).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxfix.batch.table import DoneIndex, file_key, part_name, row_key, write_part
from onnxfix.errors import OnnxfixError


@dataclass(frozen=True)
class Config:
    """Everything a worker needs to process chunks (picklable; sent with every task)."""

    model: str
    model_sha256: str
    out: str
    methods: tuple[str, ...]
    options: tuple[tuple[str, str], ...]  # (method, canonical JSON of its typed options, step and top_k): the key
    explainer: tuple[tuple[str, Any], ...]  # Explainer keyword arguments (threads excluded)
    calls: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # (method, explain() keyword arguments)
    threads: int | None = None
    batch_size: int = 16
    map_size: tuple[int, int] = (64, 64)
    png: bool = False
    overwrite: bool = False
    io_threads: int = 2
    run_token: str = ""
    retry_errors: bool = False

    def options_of(self, method: str) -> str:
        return dict(self.options)[method]

    def call_of(self, method: str) -> dict[str, Any]:
        return dict(dict(self.calls).get(method, ()))


@dataclass
class WorkItem:
    """An :class:`Item` plus the methods still to do for it (``None``: all of the run's methods)."""

    path: str
    target: str | None = None
    methods: tuple[str, ...] | None = None


@dataclass
class _Loaded:
    item: WorkItem
    todo: list[str]
    keys: dict[str, str]
    fkeys: dict[str, str]
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    x: np.ndarray | None = None
    frame: Any = None
    pil: Any = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ per-process caches

_LOCK = threading.Lock()
_EXPLAINERS: dict[tuple, tuple[Any, threading.Lock]] = {}
_DONE: dict[tuple, DoneIndex] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}


def get_explainer(cfg: Config) -> tuple[Any, threading.Lock]:
    """This process's Explainer for ``cfg``'s model and settings (built once), and the lock that serialises its use
    when several threads of one worker run chunks."""
    key = (cfg.model, cfg.model_sha256, cfg.explainer, cfg.threads)
    with _LOCK:
        hit = _EXPLAINERS.get(key)
        if hit is None:
            from onnxfix.api import Explainer

            kw = dict(cfg.explainer)
            if kw.get("preprocess") is not None:
                kw["preprocess"] = dict(kw["preprocess"])
            ex = Explainer(cfg.model, threads=cfg.threads, **kw)
            _ = ex.spec  # inferred once, before threads prepare images
            hit = _EXPLAINERS[key] = (ex, threading.Lock())
        return hit


def _done(cfg: Config) -> DoneIndex:
    key = (cfg.out, cfg.run_token, cfg.retry_errors)
    with _LOCK:
        idx = _DONE.get(key)
        if idx is None:
            _DONE.clear()  # one run at a time per process: keep memory bounded
            idx = _DONE[key] = DoneIndex.load(cfg.out, cfg.retry_errors)
        return idx


def adopt_done(cfg: Config, done: DoneIndex) -> None:
    """Use the driver's key snapshot in this process (the in-process engine: no second read of the table)."""
    with _LOCK:
        _DONE.clear()
        _DONE[(cfg.out, cfg.run_token, cfg.retry_errors)] = done


def _pool(n: int) -> ThreadPoolExecutor:
    with _LOCK:
        p = _POOLS.get(n)
        if p is None:
            p = _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="onnxfix-io")
        return p


def reset_caches() -> None:
    """Drop this process's Explainers and key snapshots (tests, long-lived workers)."""
    with _LOCK:
        _EXPLAINERS.clear()
        _DONE.clear()


# --------------------------------------------------------------------------------------------------- loading


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _load(item: WorkItem, cfg: Config, ex: Any, done: DoneIndex) -> _Loaded:
    methods = list(item.methods or cfg.methods)
    path = item.path
    error = None
    sha = size = mtime = None
    try:
        st = os.stat(path)
        size, mtime = int(st.st_size), int(st.st_mtime_ns)
        sha = _sha256(path)
    except OSError as exc:
        error = f"{path}: cannot read the file ({exc.strerror or exc})"
    content = sha if sha is not None else "path:" + path
    keys = {m: row_key(content, m, cfg.options_of(m), item.target) for m in methods}
    fkeys = {m: file_key(path, size if size is not None else -1, mtime if mtime is not None else -1, m,
                         cfg.options_of(m), item.target) for m in methods}
    have = done.has_keys([keys[m] for m in methods])
    todo = [m for m, h in zip(methods, have, strict=True) if not h]
    ld = _Loaded(item, todo, keys, fkeys, sha, size, mtime, error=error)
    if not todo or error:
        return ld
    try:
        x, frame, pil = ex.prepare(path)
        ld.x, ld.frame = x, frame
        ld.pil = pil if cfg.png else None
    except OnnxfixError as exc:
        ld.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bad image is a row with an error, never the end of the run
        ld.error = f"{path}: cannot decode the image ({type(exc).__name__}: {exc})"
    return ld


# ------------------------------------------------------------------------------------------------ explaining


def _target_arg(t: str | None) -> int | str | None:
    if t is None:
        return None
    return int(t) if t.lstrip("-").isdigit() else t


def _list_api(ex: Any) -> bool:
    """Whether ``Explainer.explain`` takes a list (the core contract's batched call; always true since issue #10
    landed — kept so that an older onnxfix on a cluster's workers degrades to one by one instead of failing)."""
    return "batch_size" in inspect.signature(ex.explain).parameters


def explain_many(ex: Any, xs: list[Any], method: str, targets: list[str | None], kw: dict[str, Any]) -> list[Any]:
    """Explanations for ``xs`` (one per item, or the one-line error text of that item).

    The batched call is tried first; if it fails, the items are explained one by one so that one bad image
    (an unknown target label, a NaN score) costs only its own row.
    """
    tg = [_target_arg(t) for t in targets]
    if _list_api(ex):
        try:
            same = all(t == tg[0] for t in tg)
            res = ex.explain(list(xs), method=method, target=tg[0] if same else tg, batch_size=len(xs), **kw)
            if isinstance(res, list) and len(res) == len(xs):
                return res
        except Exception:  # noqa: BLE001, S110 - isolated below, item by item
            pass
    # one by one: isolates the item(s) that made the batched call fail
    out: list[Any] = []
    for x, t in zip(xs, tg, strict=True):
        try:
            out.append(ex.explain(x, method=method, target=t, **kw))
        except OnnxfixError as exc:
            out.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - a row with the reason; the run goes on
            out.append(f"internal error: {type(exc).__name__}: {exc}")
    return out


def _image_box(box: list[float] | None, frame: Any, from_points: bool) -> list[float] | None:
    if box is None:
        return None
    sx, sy = frame.scale_xy
    x0, y0, x1, y1 = (float(v) for v in box)
    if from_points:  # points' box: pixel-centre coordinates
        (a, b), (c, d) = frame.to_image(np.array([[x0, y0], [x1, y1]]))
        return [float(a), float(b), float(c), float(d)]
    # heatmap box: first and last pixel indices (inclusive) → the image pixels those input pixels cover
    return [x0 * sx, y0 * sy, (x1 + 1) * sx - 1, (y1 + 1) * sy - 1]


def _store_map(heat: np.ndarray | None, size: tuple[int, int]) -> tuple[bytes | None, int | None, int | None]:
    from onnxfix.maps import resize_map

    if heat is None:
        return None, None, None
    h = np.asarray(heat, np.float32)
    if h.ndim != 2:
        return None, None, None
    th, tw = min(size[0], h.shape[0]), min(size[1], h.shape[1])
    small = resize_map(h, (th, tw)).astype("<f2")
    return small.tobytes(), th, tw


def _base_row(ld: _Loaded, cfg: Config, method: str) -> dict[str, Any]:
    w = h = None
    if ld.frame is not None:
        h, w = (int(v) for v in ld.frame.image_hw)
    return {
        "key": ld.keys[method], "file_key": ld.fkeys[method], "path": ld.item.path, "sha256": ld.sha256,
        "file_bytes": ld.size, "file_mtime_ns": ld.mtime_ns, "image_width": w, "image_height": h,
        "model": os.path.basename(cfg.model), "method": method, "options": cfg.options_of(method),
        "target_request": ld.item.target,
    }


def _error_row(ld: _Loaded, cfg: Config, method: str, error: str) -> dict[str, Any]:
    return {**_base_row(ld, cfg, method), "error": error, "seconds": 0.0}


def _png_path(cfg: Config, ld: _Loaded, method: str) -> str:
    from pathlib import Path

    stem = Path(ld.item.path).stem or "image"
    return os.path.join(cfg.out, "png", f"{stem}-{ld.keys[method][:10]}.{method}.png")


def _row(ld: _Loaded, cfg: Config, method: str, e: Any) -> dict[str, Any]:
    from onnxfix.maps import resize_map

    frame = ld.frame
    pts = None if e.points is None else frame.to_image(np.asarray(e.points, np.float64).reshape(-1, 2))
    box = _image_box(e.box, frame, e.points is not None)
    blob, mh, mw = _store_map(e.heatmap, cfg.map_size)
    row = {
        **_base_row(ld, cfg, method),
        "target": int(e.target), "label": str(e.label), "step": None if e.step is None else int(e.step),
        "score": float(e.score), "logit": float(e.logit),
        "top": [{"index": int(t["index"]), "label": str(t["label"]), "score": float(t["score"]),
                 "logit": float(t["logit"])} for t in e.top],
        "box": box, "points": None if pts is None else pts.astype(np.float32).tolist(),
        "map": blob, "map_height": mh, "map_width": mw, "seconds": float(e.seconds), "error": None, "png": None,
    }
    if cfg.png and ld.pil is not None:
        from onnxfix import render

        dest = _png_path(cfg, ld, method)
        # the name is unique to the row's key: an existing file (a run killed after writing it) is kept, never
        # replaced, unless --overwrite
        if cfg.overwrite or not os.path.lexists(dest):
            heat = resize_map(np.asarray(e.heatmap, np.float32), tuple(frame.image_hw))
            title = f"{method}: {e.label} ({e.score:.2f})"
            pic = render.overlay(ld.pil, heat, pts, box, title=title)
            try:
                render.save_png_new(pic, [dest], protect=[ld.item.path], overwrite=cfg.overwrite)
            except OnnxfixError:
                if not os.path.lexists(dest):  # not a name taken meanwhile by a retried task: a real failure
                    raise
        row["png"] = dest
    return row


def _explain_batch(batch: list[_Loaded], cfg: Config, ex: Any, lock: threading.Lock) -> list[dict[str, Any]]:
    rows_by_item: list[list[dict[str, Any]]] = [[] for _ in batch]
    for m in cfg.methods:
        idx = [i for i, ld in enumerate(batch) if m in ld.todo]
        if not idx:
            continue
        kw = cfg.call_of(m)
        xs = [batch[i].x for i in idx]
        with lock:
            res = explain_many(ex, xs, m, [batch[i].item.target for i in idx], kw)
        for i, r in zip(idx, res, strict=True):
            ld = batch[i]
            if isinstance(r, str):
                rows_by_item[i].append(_error_row(ld, cfg, m, r))
            else:
                try:
                    rows_by_item[i].append(_row(ld, cfg, m, r))
                except OnnxfixError as exc:
                    rows_by_item[i].append(_error_row(ld, cfg, m, str(exc)))
    return [r for rs in rows_by_item for r in rs]


def process_chunk(items: list[WorkItem], cfg: Config, progress: Any = None) -> dict[str, Any]:
    """Explain ``items`` with every method still to do and write their rows as one part file.

    Returns
    -------
    dict
        ``images`` (items in the chunk), ``rows`` (rows written), ``errors`` (rows with an error), ``skipped``
        (image × method rows already in the table), ``part`` (file name or None), ``seconds``.
    """
    t0 = time.perf_counter()
    ex, lock = get_explainer(cfg)
    done = _done(cfg)
    pool = _pool(max(1, cfg.io_threads))
    ahead = max(2 * cfg.batch_size, cfg.io_threads)
    queue: deque[Future] = deque()
    it = iter(items)
    rows: list[dict[str, Any]] = []
    skipped = 0
    batch: list[_Loaded] = []

    def refill() -> None:
        while len(queue) < ahead:
            nxt = next(it, None)
            if nxt is None:
                return
            queue.append(pool.submit(_load, nxt, cfg, ex, done))

    def flush() -> None:
        if batch:
            rows.extend(_explain_batch(batch, cfg, ex, lock))
            if progress is not None:
                progress(len(batch))
            batch.clear()

    refill()
    while queue:
        ld = queue.popleft().result()
        refill()
        n_all = len(ld.item.methods or cfg.methods)
        skipped += n_all - len(ld.todo)
        if not ld.todo:
            if progress is not None:
                progress(1)
            continue
        if ld.error is not None:
            rows.extend(_error_row(ld, cfg, m, ld.error) for m in ld.todo)
            if progress is not None:
                progress(1)
            continue
        batch.append(ld)
        if len(batch) >= cfg.batch_size:
            flush()
    flush()
    part = None
    if rows:
        part = part_name(sorted(r["key"] for r in rows))
        write_part(rows, cfg.out, part)
    return {"images": len(items), "rows": len(rows), "errors": sum(r["error"] is not None for r in rows),
            "skipped": skipped, "part": part, "seconds": time.perf_counter() - t0}
