"""``onnxfix interpret`` on EfficientNet-Lite0 (issue #6 item 2 a, c, d) with scikit-image photos.

The photos are labelled with the model's own top-1 class (the test checks the machinery and its timing, not the
model): two crops of each of four photos.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import skimage.data as sd
from PIL import Image

from onnxfix.cli import main
from onnxfix.interpret import relevant as rv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_interpret_efficientnet_lite0(real_model, tmp_path, capsys):
    entry = real_model("efficientnet_lite0")
    import onnxfix

    ex = onnxfix.Explainer(entry["path"])
    (tmp_path / "data" / "images").mkdir(parents=True)
    items = []
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        im = Image.fromarray(getattr(sd, name)()).convert("RGB")
        label = ex.predict(im, 1)[0]["index"]
        w, h = im.size
        for k, box in enumerate([(0, 0, w, h), (w // 10, h // 10, w, h)]):
            f = f"images/{name}_{k}.png"
            im.crop(box).save(tmp_path / "data" / f)
            items.append({"file": f, "label": label})
    (tmp_path / "data" / "annotations.json").write_text(json.dumps({"images": items}))
    out = tmp_path / "eff.interpret.json"
    t0 = time.perf_counter()
    code = main(["interpret", entry["path"], str(tmp_path / "data"), "--out", str(out), "--layers", "last:10",
                 "--patches", "--patch-top", "2", "--crops", "20", "--ablation", "--seeds", "2"])
    seconds = time.perf_counter() - t0
    assert code == 0, capsys.readouterr().err
    d = rv.load_relevant(out)
    assert d["images"] == 8 and len(d["layers"]) == 10 and d["converged"]
    assert all(len(v) >= 1 for v in d["classes"].values())
    assert (tmp_path / "eff.patches.png").is_file()
    assert 0.0 <= d["ablation"]["relevant"] <= d["ablation"]["base"]
    s = d["seconds"]
    print(f"EfficientNet-Lite0: responses {s['responses_per_image'] * 1000:.0f} ms/image, lasso {s['lasso']:.2f} s, "
          f"patches {s['patches']:.1f} s, ablation {s['ablation']:.1f} s, all {seconds:.1f} s")
    assert np.isfinite(s["lasso"])
