"""The evaluation runner: explain every image with every method, score the maps, append one row per
(image, method) to a JSONL file as it goes, aggregate.

Decisions (docs/evaluation.md collects them):

* **Which map.** Localisation, faithfulness, confidence, deletion and sanity metrics use the map for the
  *ground-truth* class (the Grad-CAM paper's pointing and WSOL GT-known protocol); WSOL top-1/top-5 errors use the
  maps of the *predicted* classes (ILSVRC). Maps are cached per (image, method, class).
* **Frames.** Region metrics (pointing, boxes, masks) use ``Explanation.heatmap`` on the image's own pixels, upright
  (EXIF orientation applied; the dataset's boxes and masks are turned into that frame, :mod:`.dataset`). Box
  metrics (WSOL, the box variant of confidence) use Grad-CAM's *largest-component* box of the heatmap (§4), the
  rule its localisation numbers are defined with (:func:`metric_box`); fixations keep their inlier box. The box
  the CLI draws holds the map's peak instead (:func:`onnxfix.maps.heatmap_box`). Perturbation metrics and rank
  correlations work at the model input's resolution: the heatmap is resized to it; the perturbed inputs are
  batched through ONNX Runtime (a fixed batch-1 export gets the batch-dynamic copy of
  :func:`onnxfix.methods.occlusion.batched_runtime`).
* **Region.** The object is the mask when the dataset has one, else the union of the boxes; boxes are the
  dataset's, else the mask's bounding box. An image with neither gets NaN for region metrics.
* **Rows.** ``{"model", "method", "image", "metrics", "label", "predicted", "values", "seconds", "error"}``;
  written and flushed after each image × method; a resumed run skips rows with the same model + method + image +
  metric set. A truncated last line (an interrupted write) is dropped on resume. An (image, method) that fails
  gets a row with ``error`` set and the run goes on.
* **Top-5 rejection strength** (pointing_top5): the map's raw peak — max of the attribution's magnitude, or the
  number of fixations for fixations.
"""

from __future__ import annotations

import json
import math
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from onnxfix import maps
from onnxfix.errors import InputError, OnnxfixError, printable
from onnxfix.evaluate.dataset import Item
from onnxfix.evaluate.metrics import METRICS, wsol
from onnxfix.evaluate.metrics import confidence as conf
from onnxfix.evaluate.metrics import deletion as dele
from onnxfix.evaluate.metrics import mask_iou as mk
from onnxfix.evaluate.metrics import pointing as pt
from onnxfix.evaluate.metrics import sanity as san
from onnxfix.evaluate.metrics.faithfulness import faithfulness
from onnxfix.evaluate.metrics.ranks import spearman
from onnxfix.io.atomic import write_atomic
from onnxfix.io.image import decode_image, orient_image
from onnxfix.model import softmax
from onnxfix.pipeline import Progress as _Progress


@dataclass
class Settings:
    """Metric parameters (defaults documented in each metric module)."""

    top_fraction: float = 0.2
    steps: int = 16
    pointing_tolerance: float = 0.0
    top5_threshold: float = 0.5
    occlusion_window: int | None = None
    seed: int = 0


Progress = _Progress  # one progress bar for every command (onnxfix.pipeline.Progress)


def strength(e: Any) -> float:
    """The raw peak of an explanation (pointing_top5's rejection score)."""
    if e.points is not None:
        return float(len(e.points))
    a = np.asarray(e.attribution)
    return float(np.abs(a).max()) if a.size and np.issubdtype(a.dtype, np.number) else 0.0


def metric_box(e: Any) -> list[float] | None:
    """The box the box metrics score: the fixations' inlier box, else Grad-CAM's largest component (§4)."""
    if e.points is not None:
        return e.box
    return maps.heatmap_box(e.heatmap, rule="largest")


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


class Evaluator:
    """Scores explanations of one model.

    Parameters
    ----------
    explainer : onnxfix.Explainer
    metrics : list of metric family names (:data:`onnxfix.evaluate.metrics.METRICS`)
    settings : Settings, optional
    """

    def __init__(self, explainer: Any, metrics: Sequence[str], settings: Settings | None = None):
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise InputError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        self.ex = explainer
        self.metrics = list(metrics)
        self.s = settings or Settings()
        self._cascade: dict[str, Any] | None = None
        self._cache: dict[tuple, Any] = {}
        self._occlusion: tuple[tuple, np.ndarray] | None = None  # the last image's occlusion map, for every method

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _explain(self, image: Any, method: str, cls: int, ex: Any = None) -> Any:
        key = (id(ex or self.ex), method, cls)
        if key not in self._cache:
            opts = {}
            if method == "occlusion" and self.s.occlusion_window:
                opts["window"] = self.s.occlusion_window
            self._cache[key] = (ex or self.ex).explain(image, method=method, target=cls, **opts)
        return self._cache[key]

    def score_fn(self, x_one: np.ndarray, cls: int, step: int | None) -> Callable[[np.ndarray], np.ndarray]:
        """``f(batch) -> probability of class cls`` for perturbed copies of ``x_one``, batched through ORT."""
        from onnxfix.methods.occlusion import batched_runtime

        mdl = self.ex.model
        runtime, bs = batched_runtime(mdl, x_one)
        head = mdl.head
        bax = head.batch_axis if head.batch_axis is not None else 0

        def f(batch: np.ndarray) -> np.ndarray:
            out = np.empty(len(batch), np.float64)
            for s in range(0, len(batch), bs):
                chunk = batch[s:s + bs]
                logits = runtime.run({mdl.input: np.ascontiguousarray(chunk)}, [head.logits])[head.logits]
                for j in range(len(chunk)):
                    idx: list[Any] = [0] * logits.ndim
                    idx[bax] = j
                    idx[head.class_axis] = slice(None)
                    if head.time_axis is not None:
                        idx[head.time_axis] = step or 0
                    out[s + j] = softmax(np.asarray(logits[tuple(idx)]).reshape(-1))[cls]
            return out

        return f

    def _cascade_explainers(self) -> dict[str, Any]:
        if self._cascade is None:
            from onnxfix.api import Explainer

            proto = self.ex.model.graph.model
            steps = san.cascade_steps(len(san.parameter_layers(proto)))
            built: dict[int, Any] = {}
            self._cascade = {}
            for name, k in steps.items():
                if k not in built:
                    try:
                        built[k] = Explainer(san.randomised_copy(proto, k, self.s.seed),
                                             provider=self.ex.model.provider, labels=self.ex.model.labels,
                                             preprocess=self.ex._pre_overrides,
                                             threads=self.ex.model.runtime.threads)
                    except OnnxfixError:
                        built[k] = None
                self._cascade[name] = built[k]
        return self._cascade

    # -- one image × method -----------------------------------------------------------------------------------------
    def evaluate(self, item: Item, method: str) -> tuple[dict[str, float | None], int]:
        """All requested metric values for one image and method, and the predicted class."""
        self._cache = {}
        image = decode_image(item.path)
        x, frame, _ = self.ex.prepare(image)
        label = int(item.label)  # type: ignore[arg-type]
        present = [label, *item.accept]
        ih, iw = frame.image_hw
        in_hw = frame.input_hw
        region, gt_boxes = self._region(item, (ih, iw))
        e = self._explain(image, method, label)
        order = np.argsort(-e.scores, kind="stable")
        predicted = int(order[0])
        top5 = [int(c) for c in order[:5]]
        heat = e.heatmap
        heat_in = maps.resize_map(heat, in_hw)
        v: dict[str, float | None] = {}
        ms = set(self.metrics)
        if "pointing" in ms:
            v["pointing"] = pt.pointing_hit(heat, region, self.s.pointing_tolerance) if region.any() else None
        if "pointing_top5" in ms:
            if region.any():
                es = [self._explain(image, method, c) for c in top5]
                hits = [pt.pointing_hit(ec.heatmap, region, self.s.pointing_tolerance) for ec in es]
                v["pointing_top5"] = pt.pointing_top5(top5, hits, [strength(ec) for ec in es], present,
                                                      self.s.top5_threshold)
            else:
                v["pointing_top5"] = None
        if "wsol" in ms:
            if gt_boxes:
                b = wsol.exclusive(metric_box(e))
                v["box_iou"] = wsol.best_iou(b, gt_boxes)
                v["loc_gt_known"] = float(v["box_iou"] >= wsol.IOU_CORRECT)
                guesses = [(c, wsol.exclusive(metric_box(self._explain(image, method, c)))) for c in top5]
                v["loc_top1_error"] = wsol.localisation_error(guesses, gt_boxes, present, 1)
                v["loc_top5_error"] = wsol.localisation_error(guesses, gt_boxes, present, 5)
            else:
                v.update(box_iou=None, loc_gt_known=None, loc_top1_error=None, loc_top5_error=None)
        if "mask" in ms:
            if region.any():
                v["mask_iou"] = mk.mask_iou(heat, region)
                v["mask_iou_auc"] = mk.mask_iou_auc(heat, region)
                v["relevance_mass"] = mk.relevance_mass(heat, region)
                v["roc_auc"] = mk.region_auc(heat, region)
            else:
                v.update(mask_iou=None, mask_iou_auc=None, relevance_mass=None, roc_auc=None)
        needs_fn = ms & {"confidence", "deletion"}
        f = self.score_fn(x, label, e.step) if needs_fn else None
        baseline = 0.0
        layout = self.ex.model.layout
        if "faithfulness" in ms:
            okey = (str(item.path), label, self.s.occlusion_window)
            if self._occlusion is None or self._occlusion[0] != okey:
                self._occlusion = (okey, self._explain(image, "occlusion", label).attribution)
            v["faithfulness"] = faithfulness(heat, self._occlusion[1])
        if "confidence" in ms:
            y = float(softmax(e.scores)[label])
            box_in = None
            mbox = metric_box(e)
            if mbox is not None:
                sx, sy = in_hw[1] / iw, in_hw[0] / ih
                b = wsol.exclusive(mbox)
                box_in = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
            keeps = [conf.top_fraction_mask(heat_in, self.s.top_fraction), conf.box_mask(in_hw, box_in)]
            o = conf.keep_region_scores(x, keeps, f, baseline, layout)  # type: ignore[arg-type]
            v["avg_drop"] = conf.average_drop(y, float(o[0]))
            v["conf_increase"] = conf.confidence_increase(y, float(o[0]))
            v["avg_drop_box"] = conf.average_drop(y, float(o[1])) if box_in is not None else None
            v["conf_increase_box"] = conf.confidence_increase(y, float(o[1])) if box_in is not None else None
        if "deletion" in ms:
            d, i, _, _ = dele.deletion_insertion(x, heat_in, f, self.s.steps, baseline, layout)  # type: ignore[arg-type]
            v["deletion_auc"], v["insertion_auc"] = d, i
        if "sanity" in ms:
            n = len(e.scores)
            other = san.random_other_class(n, label, zlib.crc32(item.file.encode()) + self.s.seed) if n > 1 else None
            if other is not None:
                eo = self._explain(image, method, other)
                v["class_sensitivity"] = san.class_sensitivity(heat_in, maps.resize_map(eo.heatmap, in_hw))
            else:
                v["class_sensitivity"] = None
            for name in ("cascade_first", "cascade_half", "cascade_all"):
                rex = self._cascade_explainers().get(name)
                if rex is None:
                    v[name] = None
                    continue
                try:
                    er = rex.explain(image, method=method, target=label)
                    v[name] = spearman(heat_in, maps.resize_map(er.heatmap, in_hw))
                except OnnxfixError:
                    v[name] = None
        from onnxfix.evaluate.metrics.context import MetricContext, computed_values, map_explainer

        v.update(computed_values(self.metrics, lambda: MetricContext(
            x=x, heatmap=heat_in, label=label, score_fn=f or self.score_fn(x, label, e.step),
            explain_fn=map_explainer(self.ex, method, label, in_hw), layout=layout,
            seed=zlib.crc32(item.file.encode()) + self.s.seed)))
        self._cache = {}
        return {k: _finite(val) if val is not None else None for k, val in v.items()}, predicted

    @staticmethod
    def _region(item: Item, hw: tuple[int, int]) -> tuple[np.ndarray, list[list[float]]]:
        region = np.zeros(hw, bool)
        if item.mask is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(item.mask) as mi:
                    m = np.asarray(orient_image(mi, getattr(item, "orientation", 1)))
            if m.shape[:2] != tuple(hw):
                raise InputError(f"{printable(str(item.mask))}: mask is {m.shape[1]}×{m.shape[0]}, the image "
                                 f"{hw[1]}×{hw[0]}")
            region = (m[..., :3] != 0).any(axis=-1) if m.ndim == 3 else m != 0
        else:
            for b in item.boxes:
                region |= conf.box_mask(hw, b)
        boxes = [list(map(float, b)) for b in item.boxes]
        if not boxes and region.any():
            ys, xs = np.nonzero(region)
            boxes = [[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]]
        return region, boxes


# -- results file ---------------------------------------------------------------------------------------------------
def row_key(row: dict) -> tuple:
    """What makes two rows the same evaluation (resume skips a key already written)."""
    return (row.get("model"), row.get("method"), row.get("image"), tuple(sorted(row.get("metrics") or [])))


def read_rows(path: Path) -> list[dict]:
    """The complete rows of a JSONL results file; a truncated or corrupt line is dropped."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the results file ({exc})") from None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "method" in r and "image" in r:
            rows.append(r)
    return rows


def write_text_atomic(path: Path, text: str, protect: Iterable[str | Path] = ()) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (never over a ``protect`` file)."""
    write_atomic(path, lambda fh: fh.write(text), binary=False, protect=protect)


def run(explainer: Any, model_name: str, items: Sequence[Item], methods: Sequence[str], metrics: Sequence[str],
        results: Path, settings: Settings | None = None, resume: bool = True,
        progress: bool = False) -> list[dict]:
    """Evaluate ``items`` × ``methods``, appending rows to ``results`` (JSONL); return every row of this model
    for these items/methods/metrics (old and new).

    Rows already in ``results`` with the same key are not recomputed when ``resume``; otherwise the file is
    started afresh. The file is rewritten once at the start (complete lines only), then appended and flushed.
    """
    ev = Evaluator(explainer, metrics, settings)
    old = read_rows(results) if resume else []
    write_text_atomic(results, "".join(json.dumps(r) + "\n" for r in old))
    done = {row_key(r): r for r in old}
    mset = sorted(metrics)
    todo = [(it, m) for it in items for m in methods]
    bar = Progress(total=len(todo), enabled=progress)
    out: list[dict] = []
    with results.open("a", encoding="utf-8") as fh:
        for it, m in todo:
            key = (model_name, m, it.file, tuple(mset))
            if key in done:
                out.append(done[key])
                bar.step(f"{it.file} {m} (done)")
                continue
            t0 = time.perf_counter()
            row: dict[str, Any] = {"model": model_name, "method": m, "image": it.file, "metrics": mset,
                                   "label": it.label, "predicted": None, "values": {}, "seconds": 0.0, "error": None}
            try:
                values, pred = ev.evaluate(it, m)
                row["values"], row["predicted"] = values, pred
            except (OnnxfixError, ValueError, OSError) as exc:
                row["error"] = str(exc) or exc.__class__.__name__
            row["seconds"] = round(time.perf_counter() - t0, 4)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            done[key] = row
            out.append(row)
            bar.step(f"{it.file} {m}")
    bar.close()
    return out


def value_names(metrics: Iterable[str]) -> list[str]:
    """The per-image value columns of the given metric families, in registry order."""
    ms = set(metrics)
    return [v for name, spec in METRICS.items() if name in ms for v in spec.values]


def aggregate(rows: Sequence[dict], methods: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: the mean of each value over the images where it is defined, ``n`` per value, images, seconds."""
    names = value_names(metrics)
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        ok = [r for r in rs if not r.get("error")]
        summary: dict[str, Any] = {"images": len(ok), "errors": len(rs) - len(ok),
                                   "seconds": round(sum(float(r.get("seconds") or 0) for r in rs), 3),
                                   "mean": {}, "n": {}}
        for n in names:
            vals = [r["values"].get(n) for r in ok]
            vals = [float(x) for x in vals if x is not None]
            summary["mean"][n] = float(np.mean(vals)) if vals else None
            summary["n"][n] = len(vals)
        out[m] = summary
    return out
