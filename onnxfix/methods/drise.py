"""D-RISE (Petsiuk et al., "Black-box Explanation of Object Detectors via Saliency Maps", CVPR 2021, §3): RISE
masks (§3.2 of RISE: random ``cell``×``cell`` grids kept with probability ``p_keep``, upsampled and shifted) multiply
the input; each masked image's detections ``D_j = (L_j, O_j, P_j)`` are compared with the explained detection
``d_t = (L_t, 1, onehot(c_t))`` by the similarity of §3.1, ``s = max_j IoU(L_t, L_j) · cos(P_t, P_j) · O_j``; the
map is Σ_i s_i M_i (§3.2, Eq. 4; normalised by the number of masks here, which does not change the picture).

Black box: forward passes only, batched (``batch`` images per ONNX Runtime call when the model runs batches). It is
the method for detectors with NMS inside the graph, which no gradient crosses; it works on every detection head.
Detections of a masked image: the model's own (NMS inside: boxes, scores, classes — ``P_j`` is then the one-hot of
its class and ``O_j`` its score), or onnxfix's decoding without the confidence threshold and NMS (every raw
prediction: ``P_j`` its class-score vector, ``O_j`` its objectness, or its confidence (max class score) for
heads without one — with sigmoid scores the cosine alone ignores how sure a prediction is; docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxfix.errors import InputError
from onnxfix.methods.base import Attribution, Method, check_finite, register_method
from onnxfix.methods.rise import rise_masks


def similarity(head, item: np.ndarray, box: tuple, cls: int, n_classes: int) -> float:
    """max_j IoU(box, L_j) · cos(onehot(cls), P_j) · O_j over the detections of one output item (§3.1)."""
    from onnxfix import heads

    if head.kind == "nms":
        rows = np.asarray(item, np.float64).reshape(-1, 6)
        if not len(rows):
            return 0.0
        same = np.rint(rows[:, 5]).astype(np.int64) == cls
        ious = heads.iou(np.array([box]), rows[:, :4])[0]
        return float(np.max(ious * same * rows[:, 4], initial=0.0))
    boxes, p, obj = heads.decode(head, item)
    if not len(boxes):
        return 0.0
    ious = heads.iou(np.array([box]), boxes)[0]
    norm = np.linalg.norm(p, axis=1)
    cos = np.where(norm > 0, p[:, cls] / np.where(norm > 0, norm, 1), 0.0)
    o = obj if obj is not None else p.max(axis=1)  # no objectness: the prediction's confidence
    return float(np.max(ious * cos * o, initial=0.0))


@register_method
class DRISE(Method):
    name = "d-rise"
    summary = "D-RISE: RISE for detectors, masks scored by IoU × class similarity × objectness (black-box)"
    engine = "forward"
    kind = "map"

    @dataclass
    class Options:
        masks: int = 1000
        cell: int = 16
        p_keep: float = 0.5
        seed: int = 0
        batch: int = 32

        def check(self):
            if not 1 <= self.masks <= 100_000:
                raise ValueError(f"masks must be in 1..100000, got {self.masks}")
            if not 1 <= self.cell <= 1024:
                raise ValueError(f"cell must be in 1..1024, got {self.cell}")
            if not 0 < self.p_keep <= 1:
                raise ValueError(f"p_keep must be in (0, 1], got {self.p_keep}")
            if not 1 <= self.batch <= 4096:
                raise ValueError(f"batch must be in 1..4096, got {self.batch}")

    def applies(self, model):
        if model.head.kind not in ("detection", "nms"):
            return f"the explained output is a {model.head.kind}, not detections (D-RISE explains detectors)"
        return None

    def attribute_resolved(self, model, x, values, targets, opts):
        nhwc = model.layout == "nhwc"
        hw = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
        m = rise_masks(opts.masks, hw, opts.cell, opts.p_keep, opts.seed)
        head = model.head
        runner = model.batch_model()
        step = opts.batch if runner is not None else 1
        runner = runner or model
        bax = head.batch_axis
        cams, extras = [], []
        for n in range(x.shape[0]):
            t = targets[n]
            box = getattr(t, "box", None)
            if box is None:
                raise InputError(f"{self.name} explains a detection: give a box target (box:0, box:x0,y0,x1,y1)")
            s = np.zeros(len(m))
            for a in range(0, len(m), step):
                mm = m[a:a + step]
                rows = (x[n:n + 1] * (mm[:, :, :, None] if nhwc else mm[:, None])).astype(x.dtype)
                if step == 1 or len(rows) == 1:
                    outs = [runner.runtime.run({model.input: r[None]}, [head.logits])[head.logits] for r in rows]
                    items = [np.take(o, [0], axis=bax) if bax is not None else o for o in outs]
                else:
                    out = runner.runtime.run({model.input: rows}, [head.logits])[head.logits]
                    items = [np.take(out, [j], axis=bax) for j in range(len(rows))]
                for j, it in enumerate(items):
                    s[a + j] = similarity(head, it, box, t.index, model.n_classes or 0)
            cam = np.tensordot(s, m.astype(np.float64), axes=(0, 0)) / len(m)
            cams.append(cam)
            extras.append({"masks": len(m), "box": list(box), "mean_similarity": float(s.mean())})
        arr = np.stack(cams).astype(np.float32)
        check_finite(arr, f"{self.name}'s map")
        return Attribution(self.name, "map", arr, list(arr), targets, values[head.logits], extras)
