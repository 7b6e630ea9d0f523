"""Maps: normalise, upsample, fixation density, and boxes (DESIGN §4).

* **Density** of fixations: points splatted on the image grid and blurred by a Gaussian of σ = 20 px per 224 px
  of model input (the CNN-Fixations authors' setting), scaled to the image. For speed the density is computed on
  a coarser grid — at most ``DENSITY_MAX_SIDE`` pixels, and coarse enough that σ spans ``DENSITY_GRID_SIGMA``
  grid pixels — then resized (bilinear) to the image: a Gaussian that wide is smooth at that sampling.
* **Fixation box**: drop points that have fewer than 5% of all points within 10% of the image diagonal, then the
  tightest box around the rest (all points if that drops everything). The density is made from the same inliers,
  as in the authors' code (``heatmap(img, selPoints)``).
* **Heatmap box**: threshold at 15% of the maximum (Grad-CAM §4), then the box around one 8-connected component of
  what remains. Two rules (:data:`BOX_RULES`): ``"peak"`` (the default, what users see) takes the component that
  holds the map's peak, so a box always contains its own map's maximum; ``"largest"`` takes the largest component,
  Grad-CAM's rule for its weakly-supervised localisation numbers (§4), kept for the WSOL metric. They differ when a
  broad weak region outgrows the peak's: occlusion on a cup photo put the largest component in the bottom strip
  while the peak was on the cup. :func:`box_rule` names the rule an explanation's box used.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from onnxfix.kernels import gaussian_blur, label_components, neighbour_counts, splat

DENSITY_MAX_SIDE = 512
DENSITY_GRID_SIGMA = 4.0


def normalise(m: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (min → 0, max → 1; a constant map → zeros)."""
    m = np.nan_to_num(np.asarray(m, np.float32))
    lo, hi = float(m.min()) if m.size else 0.0, float(m.max()) if m.size else 0.0
    if hi <= lo:
        return np.zeros_like(m, dtype=np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def resize_map(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to (H, W)."""
    m = np.asarray(m, np.float32)
    if m.shape == tuple(hw):
        return m.copy()
    im = Image.fromarray(m, mode="F").resize((int(hw[1]), int(hw[0])), Image.Resampling.BILINEAR)
    return np.asarray(im, np.float32)


def fixation_sigma(input_hw: tuple[int, int], image_hw: tuple[int, int]) -> float:
    """σ in image pixels: 20 px at a 224-px input, scaled with the input and with the resize to the image."""
    s_in = 20.0 * float(np.sqrt(input_hw[0] * input_hw[1])) / 224.0
    scale = float(np.sqrt((image_hw[0] / input_hw[0]) * (image_hw[1] / input_hw[1])))
    return s_in * scale


def density(points: np.ndarray, hw: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred density of ``points`` ((N, 2) x, y in pixels of an H×W image), normalised to [0, 1]."""
    h, w = int(hw[0]), int(hw[1])
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    # a Gaussian of σ ≥ 4 grid pixels is smooth enough to be resized bilinearly without visible error
    f = min(1.0, DENSITY_MAX_SIDE / max(h, w), DENSITY_GRID_SIGMA / max(sigma, 1e-6))
    gh, gw = max(1, round(h * f)), max(1, round(w * f))
    fy, fx = gh / h, gw / w
    grid_pts = np.stack([(pts[:, 0] + 0.5) * fx - 0.5, (pts[:, 1] + 0.5) * fy - 0.5], axis=1)
    counts = splat(grid_pts, gh, gw)
    blurred = gaussian_blur(counts, sigma * float(np.sqrt(fx * fy)))
    return normalise(resize_map(blurred, (h, w)))


def fixation_inliers(points: np.ndarray, hw: tuple[int, int], min_fraction: float = 0.05,
                     radius_fraction: float = 0.10) -> np.ndarray:
    """Boolean mask of the points that have at least ``min_fraction`` of all points within ``radius_fraction`` of
    the image diagonal (the authors' ``out_rem``); all True if that would drop every point."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros(0, bool)
    radius = radius_fraction * float(np.hypot(hw[0], hw[1]))
    keep = neighbour_counts(pts, radius) >= min_fraction * len(pts)
    return keep if keep.any() else np.ones(len(pts), bool)


def fixation_box(points: np.ndarray, hw: tuple[int, int], min_fraction: float = 0.05,
                 radius_fraction: float = 0.10) -> list[float] | None:
    """Outlier removal + tightest box, as [x0, y0, x1, y1] in the points' pixel frame; None without points."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return None
    return bounding_box(pts[fixation_inliers(pts, hw, min_fraction, radius_fraction)])


def bounding_box(points: np.ndarray) -> list[float] | None:
    """Tightest [x0, y0, x1, y1] around (N, 2) points; None without points."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return None
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]


#: The heatmap box rules: the component holding the peak (users) or the largest one (Grad-CAM's WSOL protocol).
BOX_RULES = ("peak", "largest")


def heatmap_box(heatmap: np.ndarray, threshold: float = 0.15, max_side: int = 256,
                rule: str = "peak") -> list[float] | None:
    """Box [x0, y0, x1, y1] (in the map's pixel frame) around one connected component of ``heatmap >= threshold·max``.

    Parameters
    ----------
    heatmap : (H, W) array
    threshold : float
        Fraction of the maximum kept (Grad-CAM §4: 15%).
    max_side : int
        The mask is labelled on a copy resized to at most this side (speed); the box is scaled back.
    rule : {"peak", "largest"}
        ``"peak"``: the component that holds the map's maximum (the box contains the peak); ``"largest"``: the
        component with the most pixels (Grad-CAM's WSOL rule).
    """
    if rule not in BOX_RULES:
        raise ValueError(f"unknown box rule {rule!r}; choose from {', '.join(BOX_RULES)}")
    m = np.nan_to_num(np.asarray(heatmap, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if m.size == 0 or float(m.max()) <= 0:
        return None
    h, w = m.shape
    f = min(1.0, max_side / max(h, w))
    small = resize_map(m, (max(1, round(h * f)), max(1, round(w * f)))) if f < 1 else m
    mask = small >= threshold * float(small.max())
    lab = label_components(mask)
    if lab.max() == 0:
        return None
    sy, sx = h / small.shape[0], w / small.shape[1]
    py, px = np.unravel_index(int(np.argmax(m)), m.shape)  # the peak, in the full map
    if rule == "largest":
        sizes = np.bincount(lab.reshape(-1))
        sizes[0] = 0
        keep = int(np.argmax(sizes))
    else:
        qy, qx = min(int(py / sy), small.shape[0] - 1), min(int(px / sx), small.shape[1] - 1)
        keep = int(lab[qy, qx]) or int(lab.reshape(-1)[int(np.argmax(small))])
    ys, xs = np.nonzero(lab == keep)
    box = [float(xs.min() * sx), float(ys.min() * sy), float((xs.max() + 1) * sx - 1), float((ys.max() + 1) * sy - 1)]
    if rule == "peak":  # resizing may move the peak by a pixel: the box holds the full map's peak, always
        box = [min(box[0], float(px)), min(box[1], float(py)), max(box[2], float(px)), max(box[3], float(py))]
    return box


def box_rule(points: np.ndarray | None, rule: str = "peak") -> str:
    """The name of the rule that made an explanation's box: ``"fixation-inliers"`` for fixations (outliers removed,
    tightest box), else ``"peak-component"`` or ``"largest-component"`` (the heatmap rule used)."""
    if points is not None:
        return "fixation-inliers"
    return f"{rule}-component"
