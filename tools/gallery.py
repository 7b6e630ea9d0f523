#!/usr/bin/env python
"""Render the README gallery into docs/gallery/ (EfficientNet-Lite0 from tools/real_models.py, scikit-image photos).

    python tools/gallery.py            # ~1 min on 2 CPU cores

Every picture comes from the public API, so the gallery shows what a user gets.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import skimage.data as sd  # noqa: E402
from PIL import Image  # noqa: E402

from onnxfix import Explainer  # noqa: E402
from onnxfix.render import panel  # noqa: E402

OUT = ROOT / "docs" / "gallery"


def save_png(im: Image.Image, path: Path) -> None:
    im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def _small(im: Image.Image, width: int) -> Image.Image:
    """Scaled to at most ``width`` pixels and reduced to 256 colours, so the repository stays small."""
    im = im if im.width <= width else im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    return im.convert("RGB")


def main() -> int:
    spec = importlib.util.spec_from_file_location("rm", ROOT / "tools" / "real_models.py")
    rm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rm)
    entry = rm.ensure(["efficientnet_lite0"])["efficientnet_lite0"]
    if "error" in entry:
        print(f"gallery: EfficientNet-Lite0 unavailable: {entry['error']}", file=sys.stderr)
        return 1
    ex = Explainer(entry["path"])
    cat, coffee = sd.chelsea(), sd.coffee()
    OUT.mkdir(parents=True, exist_ok=True)
    methods = [m for m, why in ex.methods().items() if why is None]
    shots = [ex.explain(coffee, method=m).render() for m in methods]
    save_png(_small(panel(shots), 1200), OUT / "methods.png")
    print(OUT / "methods.png", methods)

    from onnxfix.methods.textual import textual_panel

    save_png(_small(textual_panel(ex.explain(cat, method="gradcam", textual=True)), 1200), OUT / "textual.png")
    from onnxfix.interpret.views import activation_grid

    save_png(_small(activation_grid(ex, cat, max_channels=32), 1200), OUT / "activations.png")
    from onnxfix.interpret.filters import filters_view

    save_png(_small(filters_view(ex, cat, k=2), 1200), OUT / "filters.png")
    from onnxfix.interpret.impressions import class_impression

    im, _ = class_impression(ex, "flamingo", steps=120, progress=False)
    save_png(_small(im, 320), OUT / "impression_flamingo.png")
    print("wrote", sorted(p.name for p in OUT.glob("*.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
