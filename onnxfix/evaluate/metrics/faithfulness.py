"""Faithfulness (Grad-CAM §5.3): Spearman rank correlation between a method's map and an occlusion map, both at
the same resolution. Decision: the resolution is the model input's (the occlusion map's own); the method's
heatmap on the image is resized bilinearly to it. Rank correlation ignores monotone rescaling, so normalised
heatmaps can be compared with raw score drops.
"""

from __future__ import annotations

import numpy as np

from onnxfix import maps
from onnxfix.evaluate.metrics.ranks import spearman


def faithfulness(heatmap: np.ndarray, occlusion_map: np.ndarray) -> float:
    """Spearman's rho between ``heatmap`` (resized to the occlusion map's shape) and ``occlusion_map``."""
    occ = np.asarray(occlusion_map, np.float32)
    h = maps.resize_map(np.asarray(heatmap, np.float32), occ.shape)
    return spearman(h, occ)
