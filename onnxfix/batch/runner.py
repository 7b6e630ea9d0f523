"""``onnxfix.batch.run``: the driver — inputs, resume, chunks, and the local or Dask engine that runs them.

The driver streams the inputs, drops the images whose rows are all in the table already (from a ``stat``:
``file_key``), groups the rest into chunks of ``row_group`` images and hands them to an engine with a bounded
number in flight, so memory stays flat whatever the number of images:

* ``local``, 1 worker: chunks run in this process (:func:`onnxfix.batch.worker.process_chunk`);
* ``local``, N workers: a pool of N spawned processes, each with ``cores // N`` ONNX Runtime and numba threads;
* ``dask``: the same function mapped over chunks on a Dask cluster (``scheduler`` address, or a ``LocalCluster``
  of ``workers`` processes); every worker writes its parts into ``out`` (a folder every worker can reach).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from onnxfix.batch import table as tbl
from onnxfix.batch.inputs import IMAGE_EXTENSIONS, Item, check_inputs, count_items, iter_items
from onnxfix.batch.progress import Progress
from onnxfix.batch.worker import Config, WorkItem, adopt_done, get_explainer, process_chunk
from onnxfix.errors import InputError, UnsupportedModel

ENGINES = ("local", "dask")
MAX_BATCH = 8


def cpu_count() -> int:
    """Cores this process may use (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_batch_size(ex: Any, workers: int = 1) -> int:
    """Images per ONNX Runtime call: what fits in the memory budget (split between ``workers``), at most 8.

    One image is costed as every tensor of the graph (unknown dimensions as 1) × 4 bytes × 4 (forward values,
    their gradients, and copies) — a generous bound; beyond 8 the gain of a larger batch is small on CPUs.
    """
    from onnxfix.runtime import MEMORY_FRACTION, available_memory

    per = 0
    for t in ex.model.graph.tensors.values():
        if t.shape:
            n = 1
            for d in t.shape:
                n *= d if isinstance(d, int) and d > 0 else 1
            per += n * 4
    budget = ex.model.runtime.memory_budget
    if budget is None:
        budget = int((available_memory() or 4 * 1024**3) * MEMORY_FRACTION)
    b = int(budget / max(1, workers) // max(1, per * 4))
    return max(1, min(MAX_BATCH, b))


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _method_list(methods: str | Iterable[str], ex: Any) -> list[str]:
    from onnxfix.methods import METHODS

    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m and m.strip()]
    if not names:
        raise InputError("--methods: name at least one method (or 'all')")
    if names == ["all"]:
        names = [n for n, why in ex.methods().items() if why is None]
        if not names:
            raise UnsupportedModel("no method applies to this model; see 'onnxfix inspect'")
    for n in names:
        if n not in METHODS:
            raise InputError(f"--methods: unknown method {n!r}; choose from {', '.join(METHODS)} or all")
    return list(dict.fromkeys(names))


def _method_calls(names: list[str], common: dict[str, Any], per: dict[str, dict[str, Any]], layer: str | None,
                  step: int | None, top_k: int) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Per method: the keyword arguments of ``Explainer.explain`` and the canonical options text of the row key.

    The key holds the method's typed options with their defaults filled in (``window=16`` given as text on the
    command line or as an int in Python, or left at its default, is one key); ``--layer`` goes to the methods
    that take a layer only.
    """
    from onnxfix.methods import METHODS
    from onnxfix.methods.base import option_fields

    calls: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    takers = [m for m in names if "layer" in option_fields(METHODS[m].Options) or METHODS[m].free_options]
    if layer is not None and not takers:
        raise InputError(f"--layer: none of {', '.join(names)} takes a layer (layer methods: gradcam, cam...)")
    for m in names:
        meth = METHODS[m]
        raw = {**common, **per.get(m, {})}
        if layer is not None and m in takers:
            raw["layer"] = layer
        typed = meth.options_dict(meth.parse_options(raw))
        calls[m] = {**raw, "step": step, "top_k": top_k}
        keys[m] = _canon({"options": typed, "step": step, "top_k": top_k})
    return calls, keys


def _check_methods(ex: Any, methods: list[str], calls: dict[str, dict[str, Any]], target: str | None) -> None:
    """Refuse up front what would make every row an error: a method that does not apply, a bad option or target."""
    from PIL import Image

    from onnxfix.batch.worker import _target_arg

    why = ex.methods()
    ok = [n for n, r in why.items() if r is None]
    for m in methods:
        if why.get(m):
            raise UnsupportedModel(f"{m} cannot explain this model: {why[m]}; methods that work: {', '.join(ok)}")
    spec = ex.spec
    probe = Image.new("RGB", (spec.width, spec.height), (128, 128, 128))
    for m in methods:
        ex.explain(probe, method=m, target=_target_arg(target), **calls[m])


def _chunks(items: Iterator[Item], cfg: Config, done: tbl.DoneIndex, size: int,
            skipped: Callable[[int, int], None]) -> Iterator[list[WorkItem]]:
    """Work items grouped by ``size``; images whose rows are all done (same path, size and mtime) are skipped."""
    chunk: list[WorkItem] = []
    for it in items:
        todo: tuple[str, ...] | None = None
        if len(done):
            try:
                st = os.stat(it.path)
                fk = [tbl.file_key(it.path, int(st.st_size), int(st.st_mtime_ns), m, cfg.options_of(m), it.target)
                      for m in cfg.methods]
                have = done.has_file_keys(fk)
                if have.all():
                    skipped(1, len(cfg.methods))
                    continue
                if have.any():
                    todo = tuple(m for m, h in zip(cfg.methods, have, strict=True) if not h)
                    skipped(0, len(cfg.methods) - len(todo))
            except OSError:
                pass  # the worker writes the error row (or finds it done by its key)
        chunk.append(WorkItem(it.path, it.target, todo))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextmanager
def _thread_env(threads: int):
    """Thread counts for processes started inside the block (numba, OpenMP, BLAS; ORT gets ``threads`` itself)."""
    names = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    old = {k: os.environ.get(k) for k in names}
    os.environ.update({k: str(threads) for k in names})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_bounded(submit: Callable[[list[WorkItem]], Any], wait_one: Callable[[set], tuple[Any, set]],
                 chunks: Iterator[list[WorkItem]], in_flight: int, on_result: Callable[[dict], None]) -> None:
    pending: set = set()
    for chunk in itertools.islice(chunks, in_flight):
        pending.add(submit(chunk))
    while pending:
        fut, pending = wait_one(pending)
        on_result(fut.result())
        nxt = next(chunks, None)
        if nxt is not None:
            pending.add(submit(nxt))


def _local_processes(chunks: Iterator[list[WorkItem]], cfg: Config, workers: int,
                     on_result: Callable[[dict], None]) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    def wait_one(pending: set) -> tuple[Any, set]:
        done, rest = wait(pending, return_when=FIRST_COMPLETED)
        first = done.pop()
        return first, rest | done

    with _thread_env(cfg.threads or 1), ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        _run_bounded(lambda c: pool.submit(process_chunk, c, cfg), wait_one, chunks, 2 * workers, on_result)


def _dask(chunks: Iterator[list[WorkItem]], cfg: Config, workers: int, scheduler: str | None, client: Any,
          on_result: Callable[[dict], None]) -> None:
    try:
        from distributed import Client, LocalCluster, wait
    except ImportError:
        raise InputError("--engine dask needs dask.distributed: pip install 'onnxfix[dask]'") from None
    import logging

    cluster = None
    own = client is None
    if client is None:
        if scheduler:
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise InputError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from None
        else:
            env = {k: str(cfg.threads or 1) for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                                       "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR, env=env)
            client = Client(cluster)
    try:
        slots = max(1, sum(client.nthreads().values()))

        def wait_one(pending: set) -> tuple[Any, set]:
            res = wait(list(pending), return_when="FIRST_COMPLETED")
            first = next(iter(res.done))
            return first, set(pending) - {first}

        _run_bounded(lambda c: client.submit(process_chunk, c, cfg, pure=False), wait_one, chunks, 2 * slots,
                     on_result)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()


def run(model: str | os.PathLike, inputs: str | os.PathLike | Iterable[str | os.PathLike],
        methods: str | Iterable[str], out: str | os.PathLike, engine: str = "local", *,
        workers: int | None = None, scheduler: str | None = None, client: Any = None,
        target: str | int | None = None, options: dict[str, Any] | None = None,
        method_options: dict[str, dict[str, Any]] | None = None, layer: str | None = None, step: int | None = None,
        top_k: int = 5, batch_size: int | None = None, row_group: int = 256, map_size: int | tuple[int, int] = 64,
        png: bool = False, overwrite: bool = False, fresh: bool = False, retry_errors: bool = False,
        threads: int | None = None, io_threads: int = 2, provider: str = "cpu",
        labels: str | list[str] | None = None, output: str | None = None, preprocess: dict | None = None,
        max_image_pixels: int | None = None, max_model_mb: float | None = None,
        memory_budget_mb: float | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Explain every image of ``inputs`` with every method into ``out/explanations.parquet`` (resumable).

    Parameters
    ----------
    model : path
        The ONNX model.
    inputs : path, glob or list of them
        Image files, folders (recursive), globs, or CSV/Parquet manifests with a ``path`` (and optional ``target``)
        column.
    methods : str or list of str
        Method names (``"gradcam,fixations"`` or a list), or ``"all"``.
    out : path
        The results folder: ``explanations.parquet`` (a Parquet dataset of part files), ``batch.json`` and, with
        ``png``, ``png/``. Rows already there are skipped (keyed by content hash + method + options + target).
    engine : {"local", "dask"}
        ``local``: this machine, ``workers`` processes; ``dask``: a Dask cluster at ``scheduler`` (or ``client``),
        else a ``LocalCluster`` of ``workers`` processes.
    workers : int, optional
        Local processes / LocalCluster workers (default 1 locally, the cores for a LocalCluster); each gets
        ``cores // workers`` ONNX Runtime threads unless ``threads`` is given.
    target : str or int, optional
        The target for every image without one in a manifest (any target string; default the top class).
    options, method_options : dict, optional
        Method options for every method / per method name (``{"occlusion": {"window": 16}}``).
    batch_size : int, optional
        Images per ONNX Runtime call (default: from the model's size and the memory budget, at most 8).
    row_group : int
        Images per part file (one row group: ``row_group`` × methods rows); a kill loses at most one per worker.
    map_size : int or (int, int)
        The stored map's largest size (default 64×64; never upsampled), float16, in the model-input frame.
    png : bool
        Also write overlays into ``out/png/`` (an existing file is kept unless ``overwrite``).
    fresh : bool
        Delete the table first and start over.
    retry_errors : bool
        Explain again the images whose rows hold an error.
    progress : bool, optional
        Draw the progress bar on stderr (default: when stderr is a terminal).

    Returns
    -------
    dict
        ``images`` (seen), ``explained`` (images sent to the engine), ``rows`` (written now), ``errors``,
        ``skipped`` (image × method rows already present), ``seconds``, ``images_per_s``, ``table``, ``engine``,
        ``workers``, ``batch_size``.
    """
    tbl.require_pyarrow()
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: choose local or dask")
    if engine == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise InputError("--engine dask needs dask.distributed: pip install 'onnxfix[dask]'") from None
    in_list = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    check_inputs(in_list)
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    if row_group < 1:
        raise InputError(f"--row-group {row_group}: must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    msize = (int(map_size), int(map_size)) if isinstance(map_size, int) else (int(map_size[0]), int(map_size[1]))
    if min(msize) < 1 or max(msize) > 4096:
        raise InputError(f"--map-size {map_size}: each side must be 1..4096")
    cores = cpu_count()
    n_workers = workers or (cores if engine == "dask" and not scheduler and client is None else 1)
    local_dask = engine == "dask" and not scheduler and client is None
    per_worker = threads or (max(1, cores // n_workers) if engine == "local" or local_dask else None)

    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out}: not a folder")
    model_path = os.path.abspath(str(model))
    if not os.path.isfile(model_path):
        raise InputError(f"{model}: no such model file")
    exp_kw: dict[str, Any] = {"provider": provider, "labels": labels, "output": output,
                              "preprocess": tuple(sorted((preprocess or {}).items())) or None,
                              "max_image_pixels": max_image_pixels, "max_model_mb": max_model_mb,
                              "memory_budget_mb": memory_budget_mb}
    if isinstance(labels, list):
        exp_kw["labels"] = tuple(labels)
    model_sha = _sha256_file(model_path)
    cfg0 = Config(model=model_path, model_sha256=model_sha, out=str(out_dir.resolve()), methods=(), options=(),
                  explainer=tuple(sorted(exp_kw.items())), threads=per_worker)
    # the driver's Explainer checks the model, methods and options; with one local worker it also does the work
    ex, _ = get_explainer(cfg0)
    names = _method_list(methods, ex)
    opts_all = dict(options or {})
    per_m = dict(method_options or {})
    unknown = [m for m in per_m if m not in names]
    if unknown:
        raise InputError(f"options for {', '.join(unknown)}: not among --methods {','.join(names)}")
    calls, keys = _method_calls(names, opts_all, per_m, layer, step, top_k)
    tstr = None if target is None else str(target)
    _check_methods(ex, names, calls, tstr)

    spec = ex.spec
    meta = {"model": model_path, "model_sha256": model_sha, "map_size": list(msize),
            "preprocess": {"size": [spec.height, spec.width], "layout": spec.layout, "channels": spec.channels,
                           "mean": list(spec.mean), "std": list(spec.std), "scale": spec.scale},
            "labels": None if labels is None else (labels if isinstance(labels, str) else list(labels)),
            "output": output, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if fresh:
        tbl.remove_results(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tbl.check_meta(out_dir, meta)
    tbl.clean_stale(out_dir)
    done = tbl.DoneIndex.load(out_dir, retry_errors)
    bsize = batch_size or default_batch_size(ex, n_workers if engine == "local" or local_dask else 1)
    cfg = Config(model=model_path, model_sha256=model_sha, out=cfg0.out, methods=tuple(names),
                 options=tuple(keys.items()), calls=tuple((m, tuple(sorted(c.items()))) for m, c in calls.items()),
                 explainer=cfg0.explainer, threads=per_worker, batch_size=bsize,
                 map_size=msize, png=png, overwrite=overwrite, io_threads=max(1, io_threads),
                 run_token=f"{time.time_ns()}-{os.getpid()}", retry_errors=retry_errors)

    show = Progress(None, enabled=progress)
    if show.enabled:
        show.total = count_items(in_list, [str(out_dir)])
    stats = {"images": 0, "explained": 0, "rows": 0, "errors": 0, "skipped": 0}

    def skipped(images: int, rows: int) -> None:
        stats["skipped"] += rows
        stats["images"] += images
        if images:
            show.update(images)

    in_process = engine == "local" and n_workers == 1

    def on_result(res: dict) -> None:
        stats["images"] += res["images"]
        stats["explained"] += res["images"]
        stats["rows"] += res["rows"]
        stats["errors"] += res["errors"]
        stats["skipped"] += res["skipped"]
        if not in_process:
            show.update(res["images"])

    t0 = time.perf_counter()
    chunks = _chunks(iter_items(in_list, tstr, [str(out_dir)]), cfg, done, row_group, skipped)
    try:
        if in_process:
            adopt_done(cfg, done)
            for chunk in chunks:
                on_result(process_chunk(chunk, cfg, progress=show.update))
        elif engine == "local":
            _local_processes(chunks, cfg, n_workers, on_result)
        else:
            _dask(chunks, cfg, n_workers, scheduler, client, on_result)
    finally:
        show.close()
    secs = time.perf_counter() - t0
    if stats["images"] == 0:
        raise InputError(f"no image found in {', '.join(in_list)[:200]} (image extensions: "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return {**stats, "seconds": secs, "images_per_s": stats["explained"] / secs if secs > 0 else 0.0,
            "table": str(tbl.table_dir(out_dir)), "engine": engine, "workers": n_workers, "batch_size": bsize,
            "methods": names}
