"""``onnxfix export``: the exported file, run by plain ONNX Runtime in a process that cannot import onnxfix, gives the
source model's outputs bit for bit and the explanation ``Explainer.explain`` gives (rel. ≤ 1e-5), on a batch, for
every exportable method on every sample classifier, EfficientNet-Lite0 and opennsfw."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxfix.methods import METHODS as _REGISTERED
from tests.conftest import ROOT, SAMPLES, run_cli

REAL = ROOT / ".cache" / "real_models" / "models"
MODELS = {
    **{n: SAMPLES / f"{n}.onnx" for n in ("resnet_shapes", "mobile_shapes", "inception_shapes", "digits_cnn",
                                         "digits_loc", "an8flower6", "an8flower12")},
    "efficientnet_lite0": REAL / "efficientnet_lite0.onnx",
    "opennsfw": REAL / "opennsfw.onnx",
}
SMALL = {n for n, p in MODELS.items() if p.parent == SAMPLES}
METHODS = [m for m in ("gradcam", "gradcam++", "counterfactual", "saliency", "guided-backprop", "deconvnet",
                        "guided-gradcam", "cam", "hirescam", "gradcam-elementwise", "xgradcam", "layercam",
                        "input-x-gradient") if m in _REGISTERED]
REL = 1e-5

# Runs in a fresh interpreter (-I) where importing onnxfix raises: the exported file stands on its own.
RUNNER = r"""
import json, sys
class _NoOnnxfix:
    def find_spec(self, name, path=None, target=None):
        if name == "onnxfix" or name.startswith("onnxfix."):
            raise ImportError("onnxfix must not be imported by the runner")
sys.meta_path.insert(0, _NoOnnxfix())
import numpy as np
import onnxruntime as ort
job = json.load(open(sys.argv[1]))
x = np.load(job["x"])
src = ort.InferenceSession(job["source"], providers=["CPUExecutionProvider"])
name = src.get_inputs()[0].name
fixed = isinstance(src.get_inputs()[0].shape[0], int)
outs = [o.name for o in src.get_outputs()]
per_item = [src.run(outs, {name: x[i:i + 1]}) for i in range(len(x))]
res = {"source:" + n: np.concatenate([r[k] for r in per_item]) for k, n in enumerate(outs)}
if not fixed:
    for n, v in zip(outs, src.run(outs, {name: x})):
        res["source_batch:" + n] = v
for key, path in job["exports"].items():
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    for n, v in zip(names, s.run(names, {name: x})):
        res[key + ":" + n] = v
assert not [m for m in sys.modules if m == "onnxfix" or m.startswith("onnxfix.")]
np.savez(job["out"], **res)
"""


def _images(name: str, n: int = 2) -> list[Image.Image]:
    own = SAMPLES / f"{name}.png"
    if name.startswith("an8flower") or name == "digits_loc":
        folder = ROOT / "sample_data" / name / "images"
        return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))[:n]]
    im = Image.open(own if own.exists() else SAMPLES / "resnet_shapes.png").convert("RGB")
    return [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)][:n]


def _raw_map(att: np.ndarray, method: str, layout: str) -> np.ndarray:
    """The display map an explanation's raw attribution gives (what ``explanation`` holds unnormalised)."""
    a = np.asarray(att, np.float64)
    if a.ndim == 4:  # input-shaped gradient: max over channels of |g|
        a = np.abs(a[0]).max(axis=-1 if layout == "nhwc" else 0)
    elif a.ndim == 3:
        a = a[0]
    return np.maximum(a, 0) if method == "cam" else a


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(float(np.abs(want).max()), 1e-8))


_RUNS: dict[str, dict] = {}


def _run(name: str, tmp_path_factory) -> dict:
    """Export every method of ``name`` (three variants), run them all in the onnxfix-free subprocess once."""
    if name in _RUNS:
        return _RUNS[name]
    import onnxfix
    from onnxfix.export import export_model

    path = MODELS[name]
    if not path.exists():
        pytest.skip(f"{path.name} missing: run python tools/real_models.py")
    pre = {"channels": "bgr", "scale": 1.0, "mean": (104.0, 117.0, 123.0), "std": (1.0, 1.0, 1.0)} \
        if name == "opennsfw" else None
    ex = onnxfix.Explainer(str(path), preprocess=pre)
    x = np.concatenate([ex.prepare(im)[0] for im in _images(name)]).astype(np.float32)
    d = tmp_path_factory.mktemp(f"export_{name}")
    np.save(d / "x.npy", x)
    n_classes = len(ex.explain(x[:1], method="saliency").scores)
    fixed = 1 % n_classes
    exports, infos, skipped = {}, {}, {}
    for m in METHODS:
        why = ex.methods()[m]
        if why is not None:
            skipped[m] = why
            continue
        variants = {"heatmap": dict(normalise=True)}
        if name in SMALL or m in ("gradcam", "saliency", "cam"):  # the real models: fewer variants, same code
            variants["layer"] = dict(map="layer", target=fixed)
        if m in ("gradcam", "cam"):
            variants["raw"] = {}
        for v, kw in variants.items():
            info = export_model(ex, d / f"{m}.{v}.onnx", method=m, **kw)
            exports[f"{m}/{v}"] = str(info.path)
            infos[f"{m}/{v}"] = info
    job = {"x": str(d / "x.npy"), "source": str(path), "exports": exports, "out": str(d / "out.npz")}
    (d / "job.json").write_text(json.dumps(job))
    (d / "runner.py").write_text(RUNNER)
    p = subprocess.run([sys.executable, "-I", str(d / "runner.py"), str(d / "job.json")], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = dict(np.load(d / "out.npz"))
    _RUNS[name] = {"ex": ex, "x": x, "res": res, "infos": infos, "skipped": skipped, "fixed": fixed,
                   "outputs": [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]}
    return _RUNS[name]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_model_matches_explain(name, method, tmp_path_factory):
    r = _run(name, tmp_path_factory)
    if method in r["skipped"]:
        pytest.skip(f"{method} does not apply to {name}: {r['skipped'][method]}")
    ex, x, res = r["ex"], r["x"], r["res"]
    layout = ex.spec.layout
    # the original outputs, bit for bit, for every export
    for key in r["infos"]:
        if not key.startswith(method + "/"):
            continue
        for o in r["outputs"]:
            assert np.array_equal(res[f"{key}:{o}"], res[f"source:{o}"]), (key, o)
            if f"source_batch:{o}" in res:
                assert np.array_equal(res[f"{key}:{o}"], res[f"source_batch:{o}"]), (key, o)
    for i in range(len(x)):
        e = ex.explain(x[i:i + 1], method=method)
        got = res[f"{method}/heatmap:explanation"][i]
        assert got.shape == e.heatmap.shape and got.dtype == np.float32
        assert _rel(got, e.heatmap) <= REL, (i, _rel(got, e.heatmap))
        assert int(res[f"{method}/heatmap:target"][i]) == e.target
        if f"{method}/layer:explanation" not in res:
            continue
        ef = ex.explain(x[i:i + 1], method=method, target=r["fixed"])
        want = _raw_map(ef.attribution, method, layout)
        got = res[f"{method}/layer:explanation"][i]
        assert got.shape == want.shape
        assert _rel(got, want) <= REL, (i, _rel(got, want))
        assert int(res[f"{method}/layer:target"][i]) == r["fixed"]
        if f"{method}/raw:explanation" in res:
            from onnxfix.maps import resize_map

            want = resize_map(_raw_map(e.attribution, method, layout), e.heatmap.shape)
            got = res[f"{method}/raw:explanation"][i]
            assert _rel(got, want) <= REL, (i, _rel(got, want))
    assert float(np.abs(res[f"{method}/heatmap:explanation"]).max()) > 0 or method == "counterfactual"


@pytest.mark.parametrize("name", ["resnet_shapes", "efficientnet_lite0", "opennsfw"])
def test_export_contract(name, tmp_path_factory):
    """check_model(full_check), dynamic batch, outputs appended after the original ones, metadata."""
    r = _run(name, tmp_path_factory)
    info = r["infos"]["gradcam/heatmap"]
    m = onnx.load(str(info.path))
    onnx.checker.check_model(m, full_check=True)
    names = [o.name for o in m.graph.output]
    assert names == r["outputs"] + ["explanation", "target"]
    assert m.graph.output[-1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # batch-dynamic, also where the source fixes a batch of 1
    meta = {p.key: p.value for p in m.metadata_props}
    import onnxfix

    assert meta["onnxfix.version"] == onnxfix.__version__ and meta["onnxfix.export.method"] == "gradcam"
    opts = json.loads(meta["onnxfix.export.options"])
    assert opts["normalise"] is True and opts["map"] == "input" and opts["target"] == "top"
    src_opset = next(o.version for o in onnx.load(str(MODELS[name]), load_external_data=False).opset_import
                     if o.domain in ("", "ai.onnx"))
    assert meta["onnxfix.export.source_opset"] == str(src_opset)
    assert int(meta["onnxfix.export.opset"]) == (src_opset if src_opset >= 13 else 17)


def test_cli_export(tmp_path):
    out = tmp_path / "m.onnx"
    p = run_cli("export", SAMPLES / "resnet_shapes.onnx", "--method", "saliency", "--target", "2", "-o", out)
    assert p.returncode == 0, p.stderr
    assert out.exists() and "saliency" in p.stdout
    again = run_cli("export", SAMPLES / "resnet_shapes.onnx", "--method", "saliency", "-o", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    same = run_cli("export", SAMPLES / "resnet_shapes.onnx", "--method", "gradcam", "-o",
                   SAMPLES / "resnet_shapes.onnx", "--overwrite")
    assert same.returncode == 2 and "input model" in same.stderr
    bad = run_cli("export", SAMPLES / "resnet_shapes.onnx", "--method", "occlusion", "-o", tmp_path / "o.onnx")
    assert bad.returncode == 2 and "exportable" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    seq = run_cli("export", SAMPLES / "captioner.onnx", "--method", "saliency", "-o", tmp_path / "c.onnx")
    assert seq.returncode == 3 and "sequence" in seq.stderr and "Traceback" not in seq.stderr
    nocam = run_cli("export", SAMPLES / "digits_cnn.onnx", "--method", "cam", "-o", tmp_path / "d.onnx")
    assert nocam.returncode == 3 and "cam cannot explain" in nocam.stderr


def test_fixed_class_by_label(tmp_path):
    from onnxfix.export import export_model

    labels = (SAMPLES / "resnet_shapes.labels.txt").read_text().split()
    info = export_model(SAMPLES / "resnet_shapes.onnx", tmp_path / "a.onnx", method="gradcam", target=labels[3])
    assert json.loads(info.metadata["onnxfix.export.options"])["target"] == 3
    import onnxruntime as ort

    s = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    e, t = s.run(["explanation", "target"], {"image": x})
    assert e.shape == (3, 64, 64) and t.tolist() == [3, 3, 3]
