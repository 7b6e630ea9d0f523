"""Slow, literal CNN Fixations through a ViT, written from the paper on the *torch* model (nothing shared with
``onnxfix.fixations`` and no ONNX graph: it reads the torch modules of tools/nets_v2.ViT and their activations).

Rules, as onnxfix/fixations/rules_attention.py states them (Mopuri, Garg & Babu §3.1 in transformer terms):

* fc layer ``y[j] = Σ_i a[i]·W[j, i] (+ b)`` (head, MLP fc1/fc2, attention proj, qkv): every input ``i`` with
  ``a[i]·W[j, i] > 0``;
* attention ``o[h, t, d] = Σ_k A[h, t, k]·V[h, k, d]``: the value entries ``V[h, k, d]`` with ``A[h, t, k]·V[h, k, d] >
  0`` (A is the data-dependent weight; it is not backtracked); the selective variants keep, per output *token*
  ``(h, t)`` with selected channels D, the key token of largest positive ``A[h, t, k]·Σ_{d∈D} V[h, k, d]``
  (``argmax``) or the ``top`` largest (``topk``; ties to the lower token, a plain python sort), and there the
  entries ``(k, d ∈ D)`` with a positive contribution;
* LayerNorm and GELU: the location passes through;
* residual ``z = x + f(x)``: the branch with the larger value at the location (the first on a tie);
* class token and position embedding: constants (a class-token location stops);
* patch embedding Conv: the paper's Algorithm 2 (tests/fixation_reference.py: ``conv_ref``).

Locations are python sets of index tuples for batch 0: tokens ``(t, c)``, pixels ``(0, c, y, x)``.
"""

from __future__ import annotations

import numpy as np
import torch
from fixation_reference import conv_ref


def _acts(net, x: np.ndarray) -> dict:
    """Every intermediate value of the ViT's forward for one image (float32, torch ops as the modules run them)."""
    acts: dict = {}
    with torch.no_grad():
        xt = torch.from_numpy(x)
        p = net.patch_embed(xt)
        acts["patch"] = p.numpy()
        z = torch.cat([net.cls_token.expand(1, -1, -1), p.flatten(2).transpose(1, 2)], 1) + net.pos_embed
        for i, blk in enumerate(net.blocks):
            at = blk.attn
            n1 = blk.norm1(z)
            t, d = n1.shape[1], n1.shape[2]
            qkv = at.qkv(n1)
            q, k, v = qkv.reshape(1, t, 3, at.heads, at.hd).permute(2, 0, 3, 1, 4)
            A = ((q @ k.transpose(-2, -1)) * at.scale).softmax(-1)
            o = (A @ v).transpose(1, 2).reshape(1, t, d)
            a = at.proj(o)
            z1 = z + a
            n2 = blk.norm2(z1)
            h1 = blk.mlp.fc1(n2)
            g = blk.mlp.act(h1)
            h2 = blk.mlp.fc2(g)
            acts[i] = {k_: val[0].numpy() for k_, val in dict(z=z, n1=n1, qkv=qkv, A=A, v=v, o=o, a=a, z1=z1,
                                                                  n2=n2, h1=h1, g=g, h2=h2).items()}
            z = z1 + h2
        acts["cls"] = net.norm(z)[0, 0].numpy()
        acts["logits"] = net.head(net.norm(z)[:, 0])[0].numpy()
    return acts


def fc_ref(a: np.ndarray, W: np.ndarray, outs) -> set:
    """fc on tokens: a (T, I), W (J, I) (torch Linear), outs {(t, j)} → {(t, i)} with a[t, i]·W[j, i] > 0."""
    res = set()
    for t, j in outs:
        for i in range(a.shape[1]):
            if float(a[t, i]) * float(W[j, i]) > 0:
                res.add((t, i))
    return res


def add_ref(x: np.ndarray, f: np.ndarray, outs) -> tuple[set, set]:
    """Residual ``x + f``: each location goes to the larger branch (``x`` on a tie)."""
    lx, lf = set(), set()
    for t, c in outs:
        (lf if float(f[t, c]) > float(x[t, c]) else lx).add((t, c))
    return lx, lf


def attention_ref(A: np.ndarray, v: np.ndarray, heads: int, hd: int, outs, mode: str = "positive",
                  top: int = 3) -> set:
    """``o = A·V`` per head; outs {(t, c)} of o reshaped (T, heads·hd) → {(k, c')} of qkv's value columns."""
    res = set()
    C = heads * hd
    if mode == "positive":
        for t, c in outs:
            h, d = divmod(c, hd)
            for k in range(A.shape[-1]):
                if float(A[h, t, k]) * float(v[h, k, d]) > 0:
                    res.add((k, 2 * C + h * hd + d))
        return res
    by_token: dict = {}
    for t, c in outs:
        h, d = divmod(c, hd)
        by_token.setdefault((h, t), []).append(d)
    for (h, t), ds in by_token.items():
        contrib = []
        for k in range(A.shape[-1]):
            total = 0.0
            for d in sorted(ds):
                total += float(v[h, k, d])
            contrib.append((float(A[h, t, k]) * total, k))
        best = sorted([p for p in contrib if p[0] > 0], key=lambda p: (-p[0], p[1]))[:1 if mode == "argmax" else top]
        for _, k in best:
            for d in ds:
                if float(A[h, t, k]) * float(v[h, k, d]) > 0:
                    res.add((k, 2 * C + h * hd + d))
    return res


def fixations_ref(net, x: np.ndarray, c: int, mode: str = "positive", top: int = 3) -> set:
    """Input pixels (0, channel, y, x) of the fixations of class ``c`` (one image ``x`` (1, 3, S, S)); ``mode`` the
    attention rule (positive, argmax, topk with ``top``)."""
    acts = _acts(net, x)
    W = net.head.weight.detach().numpy()
    cls_locs = {d for d in range(W.shape[1]) if float(acts["cls"][d]) * float(W[c, d]) > 0}
    z_locs = {(0, d) for d in cls_locs}  # through the final LayerNorm and Gather of token 0
    for i in reversed(range(len(net.blocks))):
        blk, a = net.blocks[i], acts[i]
        at = blk.attn
        # z = z1 + h2
        l_z1, l_h2 = add_ref(a["z1"], a["h2"], z_locs)
        l_g = fc_ref(a["g"], blk.mlp.fc2.weight.detach().numpy(), l_h2)
        l_n2 = fc_ref(a["n2"], blk.mlp.fc1.weight.detach().numpy(), l_g)  # GELU passes
        l_z1 |= l_n2  # norm2 passes
        # z1 = z + a
        l_z, l_a = add_ref(a["z"], a["a"], l_z1)
        l_o = fc_ref(a["o"], at.proj.weight.detach().numpy(), l_a)
        l_qkv = attention_ref(a["A"], a["v"], at.heads, at.hd, l_o, mode, top)
        l_n1 = fc_ref(a["n1"], at.qkv.weight.detach().numpy(), l_qkv)
        z_locs = l_z | l_n1  # norm1 passes
    g = net.grid
    patch = {(0, ch, (t - 1) // g, (t - 1) % g) for t, ch in z_locs if t >= 1}  # token 0: the constant class token
    conv = net.patch_embed
    return conv_ref(x, conv.weight.detach().numpy(), patch, list(conv.stride), [0, 0], [1, 1])


def logits(net, x: np.ndarray) -> np.ndarray:
    return _acts(net, x)["logits"]


__all__ = ["fixations_ref", "logits"]
