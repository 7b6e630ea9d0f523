"""``resize``: imported by pytorch_grad_cam.sess (not used by the parity tests)."""

import torch.nn.functional as F


def resize(img, size, antialias=True):
    if isinstance(size, int):
        size = (size, size)
    squeeze = img.dim() == 3
    x = img[None] if squeeze else img
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
    return y[0] if squeeze else y
