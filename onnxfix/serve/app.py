"""The HTTP service: a Starlette app around one :class:`~onnxfix.api.Explainer` (docs/serve.md).

* ``POST /explain?method=M&target=T[&top_k=K][&overlay=1]`` — the image as the raw request body or as a multipart
  field (``image`` or ``file``; any name is taken if it is the only file) → the CLI's ``--json`` object plus
  ``heatmap_png_base64`` (the heatmap as an 8-bit grey PNG on the image's pixels) and, with ``overlay=1``,
  ``overlay_png_base64`` (the picture ``onnxfix MODEL IMAGE`` writes).
* ``GET /health`` — ``{"status": "ok", ...}`` with counters; ``GET /methods`` — the served methods; ``GET /`` — a
  small page (no build step, no CDN) to drop an image and look at the overlay, the top-k and the box.

Requests that arrive together are explained together: the first one opens a short batching window
(``batch_window_ms``), and up to ``max_batch`` requests with the same method go through one
``Explainer.explain(list, ...)`` call. The explainer runs on one worker thread (ONNX Runtime uses the cores inside
a call). Bounded: the body size (``max_upload_mb``, 413), the requests in progress (``max_pending``, 503), the image
pixels (the explainer's ``max_image_pixels``). Bad input gets a 4xx with the CLI's one-line reason
(InputError → 400, UnsupportedModel → 422); never a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from onnxfix.errors import InputError, OnnxfixError, UnsupportedModel


@dataclass
class ServeConfig:
    """Limits and batching of the service."""

    methods: list[str] | None = None  #: served methods (default: every method that applies to the model)
    default_method: str | None = None  #: method when the request names none (default: gradcam, else the first)
    batch_window_ms: float = 10.0  #: how long the first request of a batch waits for others (0: no waiting)
    max_batch: int = 8  #: requests per explain call (1: batching off)
    max_upload_mb: float = 20.0  #: largest request body
    max_pending: int = 64  #: requests in progress beyond which new ones get 503
    top_k: int = 5
    model_name: str = "model"


class BodyTooLarge(Exception):
    pass


class _LimitBody:
    """ASGI middleware: a request whose body exceeds ``limit`` bytes gets 413 (from Content-Length before reading,
    or while reading a chunked body)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n < 0 or n > self.limit:
                    resp = _error(413, f"request body of {v.decode('latin-1')} bytes is above the limit of "
                                       f"{self.limit} bytes (--max-upload-mb)")
                    await resp(scope, receive, send)
                    return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return msg

        await self.app(scope, limited, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error", "status": status},
                        status_code=status)


@dataclass
class _Job:
    image: Image.Image
    name: str
    method: str
    target: Any
    top_k: int
    overlay: bool
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Collects requests for a short window and explains them in one ``Explainer.explain(list)`` call."""

    def __init__(self, explainer: Any, config: ServeConfig):
        self.ex = explainer
        self.cfg = config
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxfix-explain")
        self.task: asyncio.Task | None = None
        self.served = 0
        self.batches = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, job: _Job) -> dict:
        self.start()
        await self.queue.put(job)
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.cfg.batch_window_ms / 1000.0
            while len(batch) < self.cfg.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            groups: dict[tuple, list[_Job]] = {}
            for j in batch:
                groups.setdefault((j.method, j.top_k), []).append(j)
            for jobs in groups.values():
                live = [j for j in jobs if not j.future.done()]
                if not live:
                    continue
                try:
                    results = await loop.run_in_executor(self.pool, self._run, live)
                except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                    results = [exc] * len(live)
                for j, r in zip(live, results, strict=True):
                    if j.future.done():
                        continue
                    if isinstance(r, BaseException):
                        j.future.set_exception(r)
                    else:
                        j.future.set_result(r)

    def _run(self, jobs: list[_Job]) -> list[dict | BaseException]:
        """Explain ``jobs`` (one method) together; if that fails, one by one so each gets its own answer."""
        m, k = jobs[0].method, jobs[0].top_k
        with self.lock:
            self.batches += 1
            self.served += len(jobs)
        try:
            if len(jobs) == 1:
                exps = [self.ex.explain(jobs[0].image, method=m, target=jobs[0].target, top_k=k)]
            else:
                exps = self.ex.explain([j.image for j in jobs], method=m, target=[j.target for j in jobs], top_k=k,
                                       batch_size=len(jobs))
        except OnnxfixError:
            if len(jobs) == 1:
                raise
            return [r for j in jobs for r in self._run([j])]
        out: list[dict | BaseException] = []
        for j, e in zip(jobs, exps, strict=True):
            try:
                out.append(_response(e, j, self.cfg.model_name))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out


def _png_b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _response(e: Any, job: _Job, model_name: str) -> dict:
    d = e.to_json(job.name, model_name, None)
    heat = np.clip(np.nan_to_num(np.asarray(e.heatmap, np.float32)), 0, 1)
    d["heatmap_png_base64"] = _png_b64(Image.fromarray((heat * 255 + 0.5).astype(np.uint8), "L"))
    d["image_size"] = [int(heat.shape[1]), int(heat.shape[0])]
    if job.overlay:
        d["overlay_png_base64"] = _png_b64(e.render())
    return d


def _decode(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """The upload as an RGB image, through onnxfix's own safe decoder (pixel limit checked from the header)."""
    from onnxfix.io.image import decode_image

    if not data:
        raise InputError(f"{name}: the upload is empty; send the image as the request body or a multipart file")
    fd, tmp = tempfile.mkstemp(prefix="onnxfix-upload-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            return decode_image(tmp, max_pixels)
        except InputError as exc:
            raise InputError(str(exc).replace(tmp, name)) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def create_app(explainer: Any, config: ServeConfig | None = None) -> Any:
    """The Starlette app serving ``explainer`` (an :class:`~onnxfix.api.Explainer`, loaded once at start).

    Parameters
    ----------
    explainer : Explainer
    config : ServeConfig, optional

    Returns
    -------
    ASGI app
        The Starlette app inside the body-size guard (``.app`` is the Starlette app; ``.app.state.batcher`` its
        batcher).
    """
    from onnxfix.methods import METHODS

    cfg = config or ServeConfig()
    applies = explainer.methods()
    if cfg.methods is None:
        served = [n for n, why in applies.items() if why is None]
    else:
        unknown = [n for n in cfg.methods if n not in METHODS]
        if unknown:
            raise InputError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        bad = [n for n in cfg.methods if applies.get(n)]
        if bad:
            raise UnsupportedModel(f"--methods: {bad[0]} cannot explain this model: {applies[bad[0]]}")
        served = list(dict.fromkeys(cfg.methods))
    if not served:
        raise UnsupportedModel("no method applies to this model; see 'onnxfix inspect'")
    default = cfg.default_method or ("gradcam" if "gradcam" in served else served[0])
    if default not in served:
        raise InputError(f"default method {default!r} is not served ({', '.join(served)})")
    batcher = Batcher(explainer, cfg)
    state = {"pending": 0}
    max_pixels = getattr(explainer, "max_image_pixels", None)

    async def explain(request: Request) -> Response:
        if state["pending"] >= cfg.max_pending:
            return _error(503, f"busy: {state['pending']} requests in progress (--max-pending); retry shortly")
        state["pending"] += 1
        try:
            return await _explain(request)
        except BodyTooLarge:
            return _error(413, f"request body is above the limit of {int(cfg.max_upload_mb * 1024**2)} bytes "
                               "(--max-upload-mb)")
        except InputError as exc:
            return _error(400, str(exc))
        except UnsupportedModel as exc:
            return _error(422, str(exc))
        except OnnxfixError as exc:
            return _error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - one line for the client and the log, never a traceback
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            print(f"onnxfix serve: internal error: {type(exc).__name__}: {line}", file=sys.stderr, flush=True)
            return _error(500, f"internal error ({type(exc).__name__}); the request was not explained")
        finally:
            state["pending"] -= 1

    async def _explain(request: Request) -> Response:
        q: dict[str, str] = dict(request.query_params)
        ctype = request.headers.get("content-type", "")
        name = q.get("name") or "upload"
        if ctype.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=4, max_fields=16)
            except BodyTooLarge:
                raise
            except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors
                raise InputError(f"cannot read the multipart body ({type(exc).__name__})") from None
            files = [(k, v) for k, v in form.multi_items() if hasattr(v, "read")]
            pick = [v for k, v in files if k in ("image", "file")] or ([files[0][1]] if len(files) == 1 else [])
            if not pick:
                raise InputError("the multipart body has no image: send it in a field named 'image'")
            up = pick[0]
            data = await up.read()
            name = up.filename or name
            for k, v in form.multi_items():  # form fields work as query parameters do (the query wins)
                if isinstance(v, str) and k in ("method", "target", "top_k", "overlay"):
                    q.setdefault(k, v)
        else:
            data = await request.body()
        method = q.get("method") or default
        if method not in served:
            if method in METHODS and applies.get(method):
                raise UnsupportedModel(f"{method} cannot explain this model: {applies[method]}")
            raise InputError(f"unknown method {method!r}; this service offers {', '.join(served)}")
        target_text = (q.get("target") or "").strip()
        target: Any = None if target_text.lower() in ("", "top") else (
            int(target_text) if target_text.lstrip("-").isdigit() else target_text)
        try:
            top_k = int(q.get("top_k", cfg.top_k))
        except ValueError:
            raise InputError(f"top_k must be an integer, got {q.get('top_k')!r}") from None
        if not 0 <= top_k <= 100:
            raise InputError(f"top_k must be in 0..100, got {top_k}")
        overlay = str(q.get("overlay", "0")).lower() in ("1", "true", "yes")
        image = await asyncio.get_running_loop().run_in_executor(None, _decode, data, name, max_pixels)
        fut = asyncio.get_running_loop().create_future()
        result = await batcher.submit(_Job(image, name, method, target, top_k, overlay, fut))
        return JSONResponse(result)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": cfg.model_name, "pending": state["pending"],
                             "queued": batcher.queue.qsize(), "served": batcher.served, "batches": batcher.batches,
                             "max_batch": cfg.max_batch, "batch_window_ms": cfg.batch_window_ms})

    async def methods(request: Request) -> Response:
        return JSONResponse({"model": cfg.model_name, "default": default,
                             "methods": [{"name": n, "summary": METHODS[n].summary} for n in served],
                             "labels": list(getattr(explainer.model, "labels", None) or [])[:10000]})

    page_html = resources.files("onnxfix.serve").joinpath("page.html").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html, headers={"Cache-Control": "no-store"})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return _error(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}")

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error ({type(exc).__name__})")

    app = Starlette(routes=[Route("/", page), Route("/explain", explain, methods=["POST"]),
                            Route("/health", health), Route("/methods", methods)],
                    exception_handlers={404: not_found, 405: not_found, 500: server_error})
    app.state.batcher = batcher
    app.state.served = served
    limit = int(cfg.max_upload_mb * 1024**2)
    return _LimitBody(app, limit)
