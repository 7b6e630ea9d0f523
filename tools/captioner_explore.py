#!/usr/bin/env python
"""Scratch (issue 16, §III-D): train captioner variants (sparsity / split embedding / two-slot LSTM) and export
them, to compare per-word grounding.  python tools/captioner_explore.py OUTDIR [variant ...]"""
from __future__ import annotations

import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import samples_data as D  # noqa: E402
import samples_nets as N  # noqa: E402

VARIANTS = {
    "base": dict(),
    "split": dict(split=True),
    "p10": dict(density=0.10, prune=(400, 1200)),
    "p10s": dict(density=0.10, prune=(400, 1200), split=True),
    "p05s": dict(density=0.05, prune=(400, 1200), split=True),
    "p20s": dict(density=0.20, prune=(400, 1200), split=True),
    "p03s": dict(density=0.03, prune=(400, 1200), split=True),
    # two-slot LSTM (fixed block masks on W, R and the output layer; see Captioner)
    "ss": dict(split=True, slots=True),
    "p05ss": dict(density=0.05, prune=(400, 1200), split=True, slots=True),
    "p20ss": dict(density=0.20, prune=(400, 1200), split=True, slots=True),
}


def to_tensor(x_u8, mean, std):
    a = x_u8.astype(np.float32) * np.float32(1 / 255)
    a = a.transpose(0, 3, 1, 2)
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray((a - m) / s))


WARM = bool(__import__("os").environ.get("WARM"))


def load_onnx(net, path):
    from onnx import numpy_helper
    m = onnx.load(str(path))
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
    sd = net.state_dict()
    for k in sd:
        if k in w:
            sd[k] = w[k].reshape(sd[k].shape)
    order = [0, 2, 3, 1]  # ONNX gates i, o, f, c -> torch i, f, g, o

    def re(a, h=64):
        return torch.cat([a[g * h:(g + 1) * h] for g in order])

    lstm = [n for n in m.graph.node if n.op_type == "LSTM"][0]
    W, R, B = (w[lstm.input[i]] for i in range(1, 4))
    sd["lstm.weight_ih_l0"], sd["lstm.weight_hh_l0"] = re(W[0]), re(R[0])
    sd["lstm.bias_ih_l0"], sd["lstm.bias_hh_l0"] = re(B[0, :256]), re(B[0, 256:])
    net.load_state_dict(sd)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = sys.argv[2:] or list(VARIANTS)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    epochs = int(__import__("os").environ.get("EPOCHS", 14))
    ntr = int(__import__("os").environ.get("NTR", 8000))
    xtr, ytr, _ = D.make_captions(ntr, seed=31)
    xte, yte, _ = D.make_captions(1000, seed=32)
    a = xtr.astype(np.float64) / 255
    mean = [round(float(v), 3) for v in a.mean(axis=(0, 1, 2))]
    std = [round(float(v), 3) for v in a.std(axis=(0, 1, 2))]
    Xtr, Ytr = to_tensor(xtr, mean, std).to(dev), torch.from_numpy(ytr).to(dev)
    Xte = to_tensor(xte, mean, std).to(dev)
    res = {"mean": mean, "std": std}
    for name in names:
        t0 = time.time()
        torch.manual_seed(505)
        kw = dict(VARIANTS[name])
        if WARM and "prune" in kw:
            kw["prune"] = (0, int(0.6 * epochs * (ntr // 64)))
        net = N.Captioner(4, 2, **kw)
        if WARM:
            load_onnx(net, HERE.parent / "sample_models" / "captioner.onnx")
        net = net.to(dev)
        g = torch.Generator().manual_seed(505)
        n, bs = len(ytr), 64
        per = n // bs
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * per, pct_start=0.25)
        for _ep in range(epochs):
            net.train()
            perm = torch.randperm(n, generator=g).numpy()
            for b in range(per):
                idx = torch.from_numpy(np.sort(perm[b * bs:(b + 1) * bs])).to(dev)
                o = net(Xtr[idx], Ytr[idx])
                loss = F.cross_entropy(o.reshape(-1, o.shape[-1]), Ytr[idx].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            p = torch.cat([net(Xte[i:i + 250]) for i in range(0, 1000, 250)]).argmax(-1).cpu().numpy()
        acc = float((p == yte).mean())
        dens = {k: float((w != 0).float().mean()) for k, w in net._sparse().items()}
        net = net.cpu()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 3, 48, 96),), buf, dynamo=False, opset_version=17,
                              do_constant_folding=True, input_names=["image"], output_names=["logits"])
        m = onnx.load_from_string(buf.getvalue())
        onnx.helper.set_model_props(m, {
            "onnxfix.channels": "rgb", "onnxfix.layout": "nchw", "onnxfix.scale": "0.00392156862745098",
            "onnxfix.mean": ",".join(repr(v) for v in mean), "onnxfix.std": ",".join(repr(v) for v in std),
            "onnxfix.labels": json.dumps(list(D.CAPTION_VOCAB))})
        onnx.save(m, out / f"captioner_{name}.onnx")
        res[name] = {"acc": acc, "density": dens, "secs": round(time.time() - t0, 1)}
        print(name, res[name], flush=True)
    (out / "explore.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
