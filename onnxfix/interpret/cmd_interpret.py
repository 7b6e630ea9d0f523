"""``onnxfix interpret MODEL DATASET``: relevant filters per class (μ-lasso), average patches, ablation check.

    onnxfix interpret MODEL DATASET [--mu 10] [--form constraint|penalty] [--layers T1,T2,...] [--out FILE.json]
                      [--patches [PNG]] [--patch-top 6] [--crops 100] [--ablation] [--seeds 5] [--limit N]
                      [--provider cpu|cuda] [--labels FILE]

Writes ``<model stem>.interpret.json`` into ``--out`` (a folder; default: the model's folder, where ``onnxfix view
--filters`` looks for it) in the format of :mod:`onnxfix.interpret.relevant`; ``--patches`` writes a grid of average
patches (default ``<model stem>.patches.png`` beside the JSON). Output policy as every subcommand: an existing file is
never replaced (the next free name, ``<stem>-2.interpret.json``…, claimed atomically) unless ``--overwrite``, an input
never; kept for scripts, ``--out F.json`` / ``--patches F.png`` name the files. ``--ablation`` adds the accuracy
drop with the relevant filters zeroed vs as many random ones (also stored in the JSON under ``"ablation"``).

The data set is a folder in the evaluation format (``annotations.json``, ``annotations.csv`` or VOC XML), read with
:func:`onnxfix.evaluate.dataset.load_dataset`; labels are class indices, names, synonyms or WordNet ids of the
model's labels. Decision: every usable image is used for the lasso, whatever the model predicts for it (the paper
fits on the labelled training images); rows the loader cannot use are skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from onnxfix.errors import InputError, UnsupportedModel, printable


@dataclass
class Item:
    """One labelled image."""

    path: Path
    label: int
    accept: list[int] = field(default_factory=list)


def load_items(folder: str | Path, labels: list[str] | None, n_classes: int | None,
               warn: bool = True) -> list[Item]:
    """Labelled images of a data set folder, labels resolved against the model.

    Rows the shared loader (:mod:`onnxfix.evaluate.dataset`) skips — a missing file, a label the model does not
    know… — are reported on stderr (at most 5) and left out; no usable row at all is an :class:`InputError`.
    """
    from onnxfix.evaluate.dataset import load_dataset, resolve_labels

    ds = load_dataset(folder)
    items, skipped = resolve_labels(ds, labels, n_classes if n_classes is not None else 1 << 30)
    skipped = list(ds.skipped) + list(skipped)
    if not items:
        why = "; ".join(str(s) for s in skipped[:3])
        raise InputError(f"{folder}: no usable labelled images" + (f" ({why})" if why else ""))
    if warn and skipped:
        for s in skipped[:5]:
            print(f"onnxfix: skipped {printable(s)}", file=sys.stderr)
        if len(skipped) > 5:
            print(f"onnxfix: skipped {len(skipped) - 5} more rows", file=sys.stderr)
    return [Item(Path(it.path), int(it.label), [int(a) for a in it.accept]) for it in items]


def _parser() -> argparse.ArgumentParser:
    from onnxfix.cli import Parser, add_limit_options, float_arg, int_arg

    p = Parser(prog="onnxfix interpret",
                                description="Relevant filters per class by μ-lasso (Oramas et al., ICLR 2019), "
                                            "average patches and the ablation check.")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("dataset", help="labelled image folder (annotations.json / annotations.csv)")
    p.add_argument("--mu", type=float_arg(0, lo_open=True), default=10.0, help="μ of the lasso (default 10)")
    p.add_argument("--form", choices=["constraint", "penalty"], default="constraint",
                   help="constraint: ||w||1 <= mu (the paper's mu-lasso, default); penalty: + mu ||w||1")
    p.add_argument("--layers", default=None, help="comma-separated tensor or node names, or last:K (default: "
                                                  "every activation output of the conv layers)")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="folder for <model stem>.interpret.json (default: the model's folder; F.json names the file)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files of the same name (default: the next free name; never an input)")
    p.add_argument("--patches", nargs="?", const="", default=None, metavar="PNG",
                   help="also write average patches (default file: <model stem>.patches.png beside the JSON)")
    p.add_argument("--patch-top", type=int_arg(1, 4096), default=6, help="relevant filters per class in the patch grid")
    p.add_argument("--crops", type=int_arg(1, 100000), default=100, help="crops averaged per filter (default 100)")
    p.add_argument("--ablation", action="store_true", help="zero the relevant filters; report the accuracy drop")
    p.add_argument("--seeds", type=int_arg(0, 10000), default=5,
                   help="random draws for the ablation baseline (default 5)")
    p.add_argument("--limit", type=int_arg(1), default=None, help="use at most N images")
    p.add_argument("--labels", default=None, help="labels file (one name per line, or JSON)")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    add_limit_options(p)
    return p


def cmd_interpret(argv: list[str]) -> int:
    """Entry point of ``onnxfix interpret`` (see the module docstring); returns the exit code."""
    a = _parser().parse_args(argv)
    from onnxfix.api import Explainer
    from onnxfix.interpret import relevant as rv
    from onnxfix.io.atomic import write_new
    from onnxfix.pipeline import out_candidates

    model_stem = Path(a.model).stem or "model"
    json_names = out_candidates(a.out, model_stem, ".interpret.json", [a.model], default=Path(a.model).parent)
    first_json = next(iter(json_names))  # the policy's refusals before any work
    ex = Explainer(a.model, provider=a.provider, labels=a.labels, max_image_pixels=a.max_image_pixels,
                   max_model_mb=a.max_model_mb, memory_budget_mb=a.memory_budget_mb)
    model = ex.model
    if model.head.time_axis is not None:
        raise UnsupportedModel("interpret needs a classifier with one score vector per image; this model's output "
                               "has a time axis")
    n_classes = model._dim(model.head.logits, model.head.class_axis)
    items = load_items(a.dataset, model.labels, n_classes)
    if a.limit:
        items = items[: a.limit]
    if not items:
        raise InputError(f"{a.dataset}: the data set has no images")
    layers = rv.resolve_layers(model, [s.strip() for s in a.layers.split(",") if s.strip()] if a.layers else None)
    spec = ex.spec

    t0 = time.perf_counter()
    inputs = [ex.prepare(str(it.path))[0] for it in items]
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    X = rv.compute_responses(model, inputs, layers)
    t_resp = time.perf_counter() - t0
    labels = [it.label for it in items]
    classes = sorted(set(labels))
    channels = [int(model.graph.shape(t)[1]) for t in layers]
    t0 = time.perf_counter()
    cls, info = rv.find_relevant(X, labels, classes, layers, channels, mu=a.mu, form=a.form)
    t_lasso = time.perf_counter() - t0
    out = first_json
    protect = [a.model, *[str(it.path) for it in items]]
    record = rv.build_record(str(a.model), a.mu, a.form, layers, str(a.dataset), len(items), cls,
                             converged=bool(info["converged"]), iterations=int(info["iterations"]),
                             working_set_rounds=int(info["working_set_rounds"]),
                             seconds={"preprocess": round(t_prep, 4), "responses": round(t_resp, 4),
                                      "responses_per_image": round(t_resp / len(items), 5),
                                      "lasso": round(t_lasso, 4)})
    if a.ablation:
        from onnxfix.interpret.ablation import ablation

        t0 = time.perf_counter()
        record["ablation"] = ablation(model, record, inputs, labels, [it.accept for it in items], seeds=a.seeds)
        record["seconds"]["ablation"] = round(time.perf_counter() - t0, 4)
    png = None
    if a.patches is not None:
        from onnxfix.interpret import patches as pt
        from onnxfix.io.labels import label_of
        from onnxfix.render import save_png_new

        t0 = time.perf_counter()
        chosen = {c: rv.relevant_filters(record, int(c), a.patch_top) for c in record["classes"]}
        flist = list(dict.fromkeys((e["layer"], e["filter"]) for v in chosen.values() for e in v))
        views = [pt.model_view(it.path, spec) for it in items]
        avg = pt.average_patches(model, inputs, views, flist, k=a.crops)
        short = {t: f"L{layers.index(t)}" for t in layers}
        rows = [(f"{c} {label_of(model.labels, int(c))}",
                 [(f"{short.get(e['layer'], '?')}:{e['filter']}", avg[(e["layer"], e["filter"])]) for e in v])
                for c, v in chosen.items()]
        stem = out.name[: -len(".interpret.json")] if out.name.endswith(".interpret.json") else out.stem
        pngs = out_candidates(a.patches, stem, ".patches.png", protect) if a.patches else \
            out_candidates(out.parent, stem, ".patches.png", protect)
        png = save_png_new(pt.patch_grid(rows), pngs, protect=protect, overwrite=a.overwrite)
        record["patches_png"] = str(png)
        record["seconds"]["patches"] = round(time.perf_counter() - t0, 4)
    rv._validate(record, str(out))

    def write_json(fh) -> None:
        json.dump(record, fh, indent=1)
        fh.write("\n")

    out = write_new(_chain(out, json_names), write_json, binary=False, protect=protect, overwrite=a.overwrite)
    if a.json:
        print(json.dumps({**record, "json": str(out)}))
        return 0
    n_rel = {c: len(v) for c, v in cls.items()}
    print(f"{a.model}: {len(items)} images, {len(classes)} classes, {len(layers)} layers, {X.shape[1]} filters; "
          f"mu={a.mu:g} ({a.form}); lasso {'converged' if info['converged'] else 'did NOT converge'} "
          f"in {info['iterations']} iterations")
    from onnxfix.io.labels import label_of

    for c, v in cls.items():
        best = ", ".join(f"{layers.index(e['layer'])}:{e['filter']} ({e['weight']:.3f})" for e in v[:5])
        print(f"  class {c} {printable(label_of(model.labels, int(c)))}: {n_rel[c]} relevant filters  {best}")
    s = record["seconds"]
    print(f"  time: responses {s['responses_per_image'] * 1000:.1f} ms/image, lasso {s['lasso'] * 1000:.0f} ms")
    if "ablation" in record:
        r = record["ablation"]
        print(f"  ablation: accuracy {r['base']:.3f} -> {r['relevant']:.3f} with the {r['filters']} relevant filters "
              f"zeroed (drop {r['drop_relevant']:.3f}); {r['random_mean']:.3f} ± {r['random_std']:.3f} with as many "
              f"random filters of the same layers (drop {r['drop_random']:.3f}, {r['seeds']} seeds); "
              f"{r['random_pooled_mean']:.3f} ± {r['random_pooled_std']:.3f} drawn from all "
              f"{r['filters_in_layers']} filters")
    print(f"  wrote {printable(out)}" + (f" and {printable(png)}" if png else ""))
    sys.stdout.flush()
    return 0


def _chain(first: Path, rest) -> object:
    yield first
    yield from rest
