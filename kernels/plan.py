"""The whole CNN-Fixations backtrack as one compiled pass over a plan (built once per model by
:mod:`onnxfix.fixations.plan`).

A plan is a list of *steps* in reverse topological order, each mapping the discriminative locations of one
tensor (flat row-major indices, batch axis included) to one or more input tensors, with integer parameters in one
``int64`` array, float parameters in one ``float64`` array and every constant (convolution filters, fc matrices) in
one ``float32`` array. The activations the steps read are passed as raw addresses (``vptr``), so one call costs no
boxing of a list of arrays. Per tensor the locations are the sorted unique flat indices — the same sets, in the
same order, as :func:`onnxfix.fixations.tracer.trace`'s rule-by-rule walk (its ``np.unique`` of raveled rows).

Op codes (``steps[s, 0]``) and what they compute, each exactly as the rule in :mod:`onnxfix.fixations.rules`:

* ``FLAT``: flat index unchanged (Reshape/Flatten/Squeeze/Unsqueeze, same-shape elementwise ops);
* ``MAP``: per input axis ``c_in = off + mult · c_out[src]`` (``src < 0``: constant ``off``) with a border mode —
  broadcasting, Transpose, Slice, Pad (constant/edge/reflect/wrap), Concat and Split parts, Gather of one index;
* ``ADD``: Add/Sum/Max/Sub: the data input with the largest (signed) value wins, first on ties;
* ``CONV``: the channel with the largest float64 contribution sum in the window, then its largest position
  (:func:`onnxfix.kernels.conv_backtrack`'s arithmetic and tie order), reading through an optional virtual zero
  Pad (``Pad → Conv`` needs only the Pad's input exposed);
* ``POOL``: the window argmax (:func:`onnxfix.kernels.pool_argmax`);
* ``GPOOL``: the argmax over trailing reduced axes (global pooling, ReduceMean/Sum/Max over them);
* ``FC``: ``y = a @ b`` with ``b`` constant: every ``k`` with ``a[m, k]·b[k, n] > 0`` (float64), or only the first
  argmax (fc reading a feature map).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .conv import _better, _valid_range  # the streamed argmax and the kernel-offset range conv/pool use

__all__ = ["run_plan", "FLAT", "MAP", "ADD", "CONV", "POOL", "GPOOL", "FC"]

FLAT, MAP, ADD, CONV, POOL, GPOOL, FC = 0, 1, 2, 3, 4, 5, 6


@intrinsic
def _f32_ptr(typingctx, addr):  # pragma: no cover - compile-time
    """An int64 address as a float32 pointer (the activations stay in ONNX Runtime's numpy arrays)."""
    if not isinstance(addr, types.Integer):
        return None
    sig = types.CPointer(types.float32)(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))

    return sig, codegen


@numba.njit(cache=True)
def _at(vlay, slot, n, c, y, x, bh, bw):  # pragma: no cover - jitted
    # offset of element (n, c, y, x) of slot's (·, C, bh, bw) tensor in its stored layout: NCHW (shift 0, mask 0,
    # stored channels C) or ONNX Runtime's NCHWc (n, c // b, y, x, c % b) with b = 1 << shift, padded channels Cp
    q = 6 * slot
    s = vlay[q]
    return (n * vlay[q + 2] + ((c >> s) << s)) * bh * bw + ((y * bw + x) << s) + (c & vlay[q + 1])


@numba.njit(cache=True)
def _load(vptr, vlay, slot, flat):  # pragma: no cover - jitted
    # element ``flat`` (row-major over the logical shape) of a slot's tensor
    q = 6 * slot
    if vlay[q] == 0:
        return _f32_ptr(vptr[slot])[flat]
    w = vlay[q + 5]
    h = vlay[q + 4]
    c_n = vlay[q + 3]
    x = flat % w
    f = flat // w
    y = f % h
    f //= h
    return _f32_ptr(vptr[slot])[_at(vlay, slot, f // c_n, f % c_n, y, x, h, w)]


@numba.njit(cache=True)
def _vread(vptr, vlay, slot, n, c, y, x, bh, bw, vpt, vpl, padval):  # pragma: no cover - jitted
    # element (n, c, y, x) of a (possibly virtually zero-padded) 4-D tensor whose stored part is (·, ·, bh, bw)
    by = y - vpt
    bx = x - vpl
    if by < 0 or by >= bh or bx < 0 or bx >= bw:
        return padval
    return np.float64(_f32_ptr(vptr[slot])[_at(vlay, slot, n, c, by, bx, bh, bw)])


@numba.njit(cache=True)
def _map(locs, ip, p):  # pragma: no cover - jitted
    r_out = ip[p]
    dout = ip[p + 1:p + 1 + r_out]
    q = p + 1 + r_out
    r_in = ip[q]
    din = ip[q + 1:q + 1 + r_in]
    q = q + 1 + r_in
    out = np.empty(len(locs), np.int64)
    coord = np.empty(max(r_out, 1), np.int64)
    m = 0
    for i in range(len(locs)):
        f = locs[i]
        for a in range(r_out - 1, -1, -1):
            coord[a] = f % dout[a]
            f //= dout[a]
        flat = 0
        ok = True
        for a in range(r_in):
            src = ip[q + 4 * a]
            c = ip[q + 4 * a + 2]
            if src >= 0:
                c += ip[q + 4 * a + 1] * coord[src]
            d = din[a]
            mode = ip[q + 4 * a + 3]
            if mode == 1:  # edge
                c = min(max(c, 0), d - 1)
            elif mode == 2:  # reflect
                period = max(2 * (d - 1), 1)
                c = c % period
                if c >= d:
                    c = period - c
            elif mode == 3:  # wrap
                c = c % d
            if c < 0 or c >= d:
                ok = False
                break
            flat = flat * d + c
        if ok:
            out[m] = flat
            m += 1
    return out[:m]


@numba.njit(cache=True)
def _add(locs, ip, fp, p, vptr, vlay):  # pragma: no cover - jitted
    # returns (tensor id per data input, flat index per input and location, winning input per location)
    n_in = ip[p]
    r_out = ip[p + 1]
    dout = ip[p + 2:p + 2 + r_out]
    heads = np.empty(n_in, np.int64)
    targets = np.empty(n_in, np.int64)
    q = p + 2 + r_out
    for j in range(n_in):
        heads[j] = q
        targets[j] = ip[q]
        q += 4 + ip[q + 2]
    coord = np.empty(max(r_out, 1), np.int64)
    flats = np.empty((n_in, len(locs)), np.int64)
    win = np.zeros(len(locs), np.int64)
    for i in range(len(locs)):
        f = locs[i]
        for a in range(r_out - 1, -1, -1):
            coord[a] = f % dout[a]
            f //= dout[a]
        best = 0.0
        for j in range(n_in):
            h = heads[j]
            r_in = ip[h + 2]
            flat = 0
            for a in range(r_in):
                d = ip[h + 4 + a]
                c = 0 if d == 1 else coord[r_out - r_in + a]
                flat = flat * d + c
            flats[j, i] = flat
            if n_in > 1:
                v = fp[ip[h + 3]] * np.float64(_load(vptr, vlay, ip[h + 1], flat))
                if _better(v, best, j > 0):
                    best = v
                    win[i] = j
    return targets, flats, win


@numba.njit(cache=True)
def _conv(locs, ip, fp, p, vptr, vlay, w):  # pragma: no cover - jitted
    nc, hv, wv = ip[p + 1], ip[p + 2], ip[p + 3]
    c_out, oh, ow = ip[p + 4], ip[p + 5], ip[p + 6]
    cin_g, kh, kw = ip[p + 7], ip[p + 8], ip[p + 9]
    sh, sw, pt, pl, dh, dw, group, w_off = ip[p + 10], ip[p + 11], ip[p + 12], ip[p + 13], ip[p + 14], \
        ip[p + 15], ip[p + 16], ip[p + 17]
    slot, bh, bw, vpt, vpl = ip[p + 18], ip[p + 19], ip[p + 20], ip[p + 21], ip[p + 22]
    padval = fp[ip[p + 23]]
    cout_g = c_out // group
    q = 6 * slot
    sft, msk, nst = vlay[q], vlay[q + 1], vlay[q + 2]  # stored layout (see _at)
    hw = bh * bw
    out = np.empty(len(locs), np.int64)
    prod = np.empty(cin_g if kh == 1 and kw == 1 else 0, np.float64)
    acc = np.empty(cin_g, np.float64)
    m = 0
    for i in range(len(locs)):
        f = locs[i]
        ox = f % ow
        f //= ow
        oy = f % oh
        f //= oh
        co = f % c_out
        n = f // c_out
        by = oy * sh - pt
        bx = ox * sw - pl
        ky0, ky1 = _valid_range(by, kh, dh, hv)
        kx0, kx1 = _valid_range(bx, kw, dw, wv)
        if ky0 >= ky1 or kx0 >= kx1:
            continue  # the window lies outside the input: nothing to follow
        c0 = (co // cout_g) * cin_g
        wbase = w_off + co * cin_g * kh * kw
        if kh == 1 and kw == 1:  # one product per channel (the sum 0.0 + p orders as p): a vectorisable loop
            sy = by - vpt
            sx = bx - vpl
            if sy >= 0 and sy < bh and sx >= 0 and sx < bw:
                xp = _f32_ptr(vptr[slot])
                if sft == 0:
                    base = ((n * nst + c0) * bh + sy) * bw + sx
                    for cl in range(cin_g):
                        prod[cl] = np.float64(xp[base + cl * hw]) * np.float64(w[wbase + cl])
                elif (c0 & msk) == 0:  # blocked, from a block's start: runs of b contiguous channels
                    at = n * nst * hw + (c0 >> sft) * (hw << sft) + ((sy * bw + sx) << sft)
                    cl = 0
                    while cl < cin_g:
                        e = min(cin_g - cl, msk + 1)
                        for j in range(e):
                            prod[cl + j] = np.float64(xp[at + j]) * np.float64(w[wbase + cl + j])
                        cl += e
                        at += hw << sft
                else:
                    pos = n * nst * hw + ((sy * bw + sx) << sft)
                    for cl in range(cin_g):
                        c = c0 + cl
                        prod[cl] = np.float64(xp[pos + ((c >> sft) << sft) * hw + (c & msk)]) * \
                            np.float64(w[wbase + cl])
            else:
                for cl in range(cin_g):
                    prod[cl] = padval * np.float64(w[wbase + cl])
            best_c = 0
            best_s = prod[0]
            for cl in range(1, cin_g):
                if _better(prod[cl], best_s, True):
                    best_s = prod[cl]
                    best_c = cl
            out[m] = ((n * nc + c0 + best_c) * hv + by) * wv + bx
            m += 1
            continue
        # pass 1: per channel, the window sum of float64 contributions in row-major (ky, kx) order — accumulated
        # for all channels at once, window position after window position (each channel's sum in the same order)
        xp = _f32_ptr(vptr[slot])
        ksz = kh * kw
        for cl in range(cin_g):
            acc[cl] = 0.0
        for ky in range(ky0, ky1):
            sy = by + ky * dh - vpt
            for kx in range(kx0, kx1):
                sx = bx + kx * dw - vpl
                wk = wbase + ky * kw + kx
                if sy >= 0 and sy < bh and sx >= 0 and sx < bw:
                    if sft == 0:
                        base = ((n * nst + c0) * bh + sy) * bw + sx
                        for cl in range(cin_g):
                            acc[cl] += np.float64(xp[base + cl * hw]) * np.float64(w[wk + cl * ksz])
                    else:
                        pos = n * nst * hw + ((sy * bw + sx) << sft)
                        for cl in range(cin_g):
                            c = c0 + cl
                            acc[cl] += np.float64(xp[pos + ((c >> sft) << sft) * hw + (c & msk)]) * \
                                np.float64(w[wk + cl * ksz])
                else:
                    for cl in range(cin_g):
                        acc[cl] += padval * np.float64(w[wk + cl * ksz])
        best_s = acc[0]
        best_c = 0
        for cl in range(1, cin_g):
            if _better(acc[cl], best_s, True):
                best_s = acc[cl]
                best_c = cl
        # pass 2: the first row-major argmax of the winning channel's contributions
        best_v = 0.0
        best_y = -1
        best_x = -1
        found = False
        wc = wbase + best_c * kh * kw
        for ky in range(ky0, ky1):
            iy = by + ky * dh
            for kx in range(kx0, kx1):
                ix = bx + kx * dw
                xv = _vread(vptr, vlay, slot, n, c0 + best_c, iy, ix, bh, bw, vpt, vpl, padval)
                v = xv * np.float64(w[wc + ky * kw + kx])
                if _better(v, best_v, found):
                    best_v = v
                    best_y = iy
                    best_x = ix
                    found = True
        out[m] = ((n * nc + c0 + best_c) * hv + best_y) * wv + best_x
        m += 1
    return out[:m]


@numba.njit(cache=True)
def _pool(locs, ip, fp, p, vptr, vlay):  # pragma: no cover - jitted
    nc, hv, wv, oh, ow = ip[p + 1], ip[p + 2], ip[p + 3], ip[p + 4], ip[p + 5]
    kh, kw, sh, sw, pt, pl, dh, dw = ip[p + 6], ip[p + 7], ip[p + 8], ip[p + 9], ip[p + 10], ip[p + 11], \
        ip[p + 12], ip[p + 13]
    slot, bh, bw, vpt, vpl = ip[p + 14], ip[p + 15], ip[p + 16], ip[p + 17], ip[p + 18]
    padval = fp[ip[p + 19]]
    out = np.empty(len(locs), np.int64)
    m = 0
    for i in range(len(locs)):
        f = locs[i]
        ox = f % ow
        f //= ow
        oy = f % oh
        nci = f // oh  # n * nc + c
        by = oy * sh - pt
        bx = ox * sw - pl
        ky0, ky1 = _valid_range(by, kh, dh, hv)
        kx0, kx1 = _valid_range(bx, kw, dw, wv)
        if ky0 >= ky1 or kx0 >= kx1:
            continue
        best_v = 0.0
        best_y = -1
        best_x = -1
        found = False
        for ky in range(ky0, ky1):
            iy = by + ky * dh
            for kx in range(kx0, kx1):
                ix = bx + kx * dw
                v = np.float64(_vread(vptr, vlay, slot, nci // nc, nci % nc, iy, ix, bh, bw, vpt, vpl, padval))
                if _better(v, best_v, found):
                    best_v = v
                    best_y = iy
                    best_x = ix
                    found = True
        out[m] = (nci * hv + best_y) * wv + best_x
        m += 1
    return out[:m]


@numba.njit(cache=True)
def _gpool(locs, ip, p, vptr, vlay):  # pragma: no cover - jitted
    r, slot = ip[p], ip[p + 1]
    out = np.empty(len(locs), np.int64)
    q = 6 * slot
    sft = vlay[q]
    if sft > 0 and r == vlay[q + 4] * vlay[q + 5]:  # blocked, global pooling: (n, c) → its H·W values, b apart
        xp = _f32_ptr(vptr[slot])
        c_n = vlay[q + 3]
        for i in range(len(locs)):
            n = locs[i] // c_n
            c = locs[i] % c_n
            at = (n * vlay[q + 2] + ((c >> sft) << sft)) * r + (c & vlay[q + 1])
            best = 0.0
            arg = 0
            for j in range(r):
                v = np.float64(xp[at + (j << sft)])
                if _better(v, best, j > 0):
                    best = v
                    arg = j
            out[i] = locs[i] * r + arg
        return out
    for i in range(len(locs)):
        base = locs[i] * r
        best = 0.0
        arg = 0
        for j in range(r):
            v = np.float64(_load(vptr, vlay, slot, base + j))
            if _better(v, best, j > 0):
                best = v
                arg = j
        out[i] = base + arg
    return out


@numba.njit(cache=True)
def _fc(locs, ip, p, vptr, vlay, w):  # pragma: no cover - jitted
    k_dim, n_dim, mode, slot, w_off = ip[p + 1], ip[p + 2], ip[p + 3], ip[p + 4], ip[p + 5]
    if mode == 1:
        out = np.empty(len(locs), np.int64)
        for i in range(len(locs)):
            mm = locs[i] // n_dim
            nn = locs[i] % n_dim
            best = 0.0
            arg = 0
            for k in range(k_dim):
                v = np.float64(_load(vptr, vlay, slot, mm * k_dim + k)) * np.float64(w[w_off + k * n_dim + nn])
                if _better(v, best, k > 0):
                    best = v
                    arg = k
            out[i] = mm * k_dim + arg
        return out
    cnt = 0
    buf = np.empty(16, np.int64)
    for i in range(len(locs)):
        mm = locs[i] // n_dim
        nn = locs[i] % n_dim
        for k in range(k_dim):
            if np.float64(_load(vptr, vlay, slot, mm * k_dim + k)) * np.float64(w[w_off + k * n_dim + nn]) > 0.0:
                if cnt == len(buf):
                    nb = np.empty(2 * len(buf), np.int64)
                    nb[:cnt] = buf
                    buf = nb
                buf[cnt] = mm * k_dim + k
                cnt += 1
    return buf[:cnt]


@numba.njit(cache=True)
def _sift(a, root, end):  # pragma: no cover - jitted
    while 2 * root + 1 < end:
        child = 2 * root + 1
        if child + 1 < end and a[child] < a[child + 1]:
            child += 1
        if a[root] < a[child]:
            a[root], a[child] = a[child], a[root]
            root = child
        else:
            break


@numba.njit(cache=True)
def _heapsort(a):  # pragma: no cover - jitted
    n = len(a)
    for start in range(n // 2 - 1, -1, -1):
        _sift(a, start, n)
    for end in range(n - 1, 0, -1):
        a[0], a[end] = a[end], a[0]
        _sift(a, 0, end)


@numba.njit(cache=True)
def _grow(a, need):  # pragma: no cover - jitted
    if need <= len(a):
        return a
    size = 2 * len(a)
    if need > size:
        size = need
    b = np.empty(size, np.int64)
    b[:len(a)] = a
    return b


@numba.njit(cache=True)
def run_plan(steps, ip, fp, w, vptr, vlay, n_tensors, start_t, start_flat):  # pragma: no cover - jitted
    """Run a plan; returns (flat locations of every tensor concatenated, offsets per tensor, sent flags).

    ``vptr``: the address of each slot's float32 values; ``vlay``: six integers per slot describing how they are
    stored — shift, mask, stored channels, logical channels, height, width: ``(0, 0, C, ·, ·, ·)`` for NCHW (and
    any tensor of another rank), ``(log2 b, b − 1, Cp, C, H, W)`` for ONNX Runtime's blocked NCHWc
    (:class:`onnxfix.nchwc.Blocked`)."""
    n_steps = steps.shape[0]
    store = np.empty(4096, np.int64)  # contributions, chunk after chunk
    s_len = 0
    max_ch = 8 * n_steps + 8
    ch_t = np.empty(max_ch, np.int64)
    ch_s = np.empty(max_ch, np.int64)
    ch_n = np.empty(max_ch, np.int64)
    n_ch = 0
    fstore = np.empty(4096, np.int64)  # final (sorted unique) locations, tensor after tensor
    f_len = 0
    fin_s = np.zeros(n_tensors, np.int64)
    fin_n = np.zeros(n_tensors, np.int64)
    done = np.zeros(n_tensors, np.bool_)
    sent = np.zeros(n_tensors, np.bool_)
    sent[start_t] = True
    store = _grow(store, len(start_flat))
    store[:len(start_flat)] = start_flat
    ch_t[0], ch_s[0], ch_n[0] = start_t, 0, len(start_flat)
    n_ch = 1
    s_len = len(start_flat)
    for s in range(n_steps + 1):
        if s < n_steps:
            op, o, t_in, p, flag = steps[s, 0], steps[s, 1], steps[s, 2], steps[s, 3], steps[s, 4]
            todo_lo, todo_hi = o, o + 1
        else:  # the end: tensors no step produces (the image input)
            op, o, t_in, p, flag = -1, 0, -1, 0, 0
            todo_lo, todo_hi = 0, n_tensors
        for t in range(todo_lo, todo_hi):
            if done[t]:
                continue
            total = 0
            for c in range(n_ch):
                if ch_t[c] == t:
                    total += ch_n[c]
            tmp = np.empty(total, np.int64)
            k = 0
            for c in range(n_ch):
                if ch_t[c] == t:
                    tmp[k:k + ch_n[c]] = store[ch_s[c]:ch_s[c] + ch_n[c]]
                    k += ch_n[c]
            _heapsort(tmp)
            fstore = _grow(fstore, f_len + total)
            fin_s[t] = f_len
            m = 0
            for i in range(total):
                if i == 0 or tmp[i] != tmp[i - 1]:
                    fstore[f_len + m] = tmp[i]
                    m += 1
            fin_n[t] = m
            f_len += m
            done[t] = True
        if op < 0:
            break
        if fin_n[o] == 0:
            continue
        locs = fstore[fin_s[o]:fin_s[o] + fin_n[o]].copy()
        if op == ADD:
            targets, flats, win = _add(locs, ip, fp, p, vptr, vlay)
            for j in range(len(targets)):
                t = targets[j]
                if t < 0:
                    continue
                m = 0
                for i in range(len(locs)):
                    if win[i] == j:
                        m += 1
                store = _grow(store, s_len + m)
                m = 0
                for i in range(len(locs)):
                    if win[i] == j:
                        store[s_len + m] = flats[j, i]
                        m += 1
                sent[t] = True
                ch_t[n_ch], ch_s[n_ch], ch_n[n_ch] = t, s_len, m
                n_ch += 1
                s_len += m
            continue
        if op == FLAT:
            res = locs
        elif op == MAP:
            res = _map(locs, ip, p)
        elif op == CONV:
            res = _conv(locs, ip, fp, p, vptr, vlay, w)
        elif op == POOL:
            res = _pool(locs, ip, fp, p, vptr, vlay)
        elif op == GPOOL:
            res = _gpool(locs, ip, p, vptr, vlay)
        else:
            res = _fc(locs, ip, p, vptr, vlay, w)
        if flag == 1 and len(res) == 0:  # Concat: an input that receives nothing gets no entry
            continue
        sent[t_in] = True
        store = _grow(store, s_len + len(res))
        store[s_len:s_len + len(res)] = res
        ch_t[n_ch], ch_s[n_ch], ch_n[n_ch] = t_in, s_len, len(res)
        n_ch += 1
        s_len += len(res)
    offsets = np.zeros(n_tensors + 1, np.int64)
    for t in range(n_tensors):
        offsets[t + 1] = offsets[t] + fin_n[t]
    flat = np.empty(offsets[n_tensors], np.int64)
    for t in range(n_tensors):
        flat[offsets[t]:offsets[t + 1]] = fstore[fin_s[t]:fin_s[t] + fin_n[t]]
    return flat, offsets, sent


def compile_now() -> None:
    """Compile (or load from numba's cache) :func:`run_plan` with a one-step plan."""
    steps = np.array([[FLAT, 0, 1, 0, 0]], np.int64)
    run_plan(steps, np.zeros(1, np.int64), np.zeros(1, np.float64), np.zeros(1, np.float32),
             np.zeros(1, np.int64), np.zeros(6, np.int64), 2, 0, np.zeros(1, np.int64))


# -- the same pass in numpy: what a process runs while numba's cache is still cold (kernels/warm.py) -----------------
# Every step computes exactly what its jitted twin computes — the same float64 products and sums in the same
# sequential order, the same streamed-argmax tie and NaN rules — vectorised over the locations (tested equal).

def _np_better(v: np.ndarray, best: np.ndarray, found: np.ndarray | bool) -> np.ndarray:
    """``_better`` over arrays: ``v`` replaces ``best`` where not found yet, else where ``best`` is not NaN and
    ``v > best`` or ``v`` is NaN."""
    with np.errstate(invalid="ignore"):
        return ~np.asarray(found) | (~np.isnan(best) & ((v > best) | np.isnan(v)))


def _np_unravel(locs: np.ndarray, dims) -> list[np.ndarray]:
    coord = [None] * len(dims)
    f = locs.copy()
    for a in range(len(dims) - 1, -1, -1):
        coord[a] = f % dims[a]
        f //= dims[a]
    return coord


def _np_map(locs, ip, p):
    r_out = int(ip[p])
    dout = [int(d) for d in ip[p + 1:p + 1 + r_out]]
    q = p + 1 + r_out
    r_in = int(ip[q])
    din = [int(d) for d in ip[q + 1:q + 1 + r_in]]
    q = q + 1 + r_in
    coord = _np_unravel(locs, dout)
    flat = np.zeros(len(locs), np.int64)
    ok = np.ones(len(locs), np.bool_)
    for a in range(r_in):
        src, mult, off, mode = (int(v) for v in ip[q + 4 * a:q + 4 * a + 4])
        c = np.full(len(locs), off, np.int64)
        if src >= 0:
            c = c + mult * coord[src]
        d = din[a]
        if mode == 1:
            c = np.clip(c, 0, d - 1)
        elif mode == 2:
            period = max(2 * (d - 1), 1)
            c = c % period
            c = np.where(c >= d, period - c, c)
        elif mode == 3:
            c = c % d
        ok &= (c >= 0) & (c < d)
        flat = flat * d + c
    return flat[ok]


def _np_add(locs, ip, fp, p, vals):
    n_in, r_out = int(ip[p]), int(ip[p + 1])
    dout = [int(d) for d in ip[p + 2:p + 2 + r_out]]
    coord = _np_unravel(locs, dout)
    q = p + 2 + r_out
    targets, flats = [], []
    best = np.zeros(len(locs), np.float64)
    win = np.zeros(len(locs), np.int64)
    for j in range(n_in):
        h = q
        targets.append(int(ip[h]))
        r_in = int(ip[h + 2])
        flat = np.zeros(len(locs), np.int64)
        for a in range(r_in):
            d = int(ip[h + 4 + a])
            flat = flat * d + (0 if d == 1 else coord[r_out - r_in + a])
        flats.append(flat)
        if n_in > 1:
            v = fp[ip[h + 3]] * vals[ip[h + 1]][flat].astype(np.float64)
            upd = _np_better(v, best, j > 0)
            best = np.where(upd, v, best)
            win = np.where(upd, j, win)
        q += 4 + r_in
    return targets, flats, win


def _np_read(vals, slot, n, c, y, x, nc, bh, bw, vpt, vpl, padval):
    by, bx = y - vpt, x - vpl
    inside = (by >= 0) & (by < bh) & (bx >= 0) & (bx < bw)
    idx = ((n * nc + c) * bh + np.clip(by, 0, bh - 1)) * bw + np.clip(bx, 0, bw - 1)
    return np.where(inside, vals[slot][idx].astype(np.float64), padval)


def _np_range(base, k, d, n):
    lo = np.where(base >= 0, 0, (-base + d - 1) // d)
    rem = n - base
    hi = np.where(rem <= 0, 0, (rem + d - 1) // d)
    hi = np.minimum(hi, k)
    return np.minimum(lo, hi), hi


def _np_conv(locs, ip, fp, p, vals, w):
    nc, hv, wv, c_out, oh, ow, cin_g, kh, kw, sh, sw, pt, pl, dh, dw, group, w_off, slot, bh, bw, vpt, vpl = (
        int(v) for v in ip[p + 1:p + 23])
    padval = float(fp[ip[p + 23]])
    cout_g = c_out // group
    f = locs
    ox = f % ow
    f = f // ow
    oy = f % oh
    f = f // oh
    co = f % c_out
    n = f // c_out
    by, bx = oy * sh - pt, ox * sw - pl
    ky0, ky1 = _np_range(by, kh, dh, hv)
    kx0, kx1 = _np_range(bx, kw, dw, wv)
    keep = (ky0 < ky1) & (kx0 < kx1)
    n, co, by, bx, ky0, ky1, kx0, kx1 = (a[keep] for a in (n, co, by, bx, ky0, ky1, kx0, kx1))
    c0 = (co // cout_g) * cin_g
    wbase = w_off + co * (cin_g * kh * kw)
    cl = np.arange(cin_g)
    s = np.zeros((len(n), cin_g), np.float64)
    for ky in range(kh):
        vy = (ky >= ky0) & (ky < ky1)
        iy = by + ky * dh
        for kx in range(kw):
            valid = vy & (kx >= kx0) & (kx < kx1)
            if not valid.any():
                continue
            xv = _np_read(vals, slot, n[:, None], c0[:, None] + cl, iy[:, None], (bx + kx * dw)[:, None], nc, bh, bw,
                          vpt, vpl, padval)
            wv_ = w[wbase[:, None] + cl * (kh * kw) + (ky * kw + kx)].astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                s += np.where(valid[:, None], xv * wv_, 0.0)
    best_c = np.argmax(s, axis=1) if cin_g else np.zeros(len(n), np.int64)
    best_v = np.zeros(len(n), np.float64)
    best_y = np.full(len(n), -1, np.int64)
    best_x = np.full(len(n), -1, np.int64)
    found = np.zeros(len(n), np.bool_)
    wc = wbase + best_c * (kh * kw)
    for ky in range(kh):
        vy = (ky >= ky0) & (ky < ky1)
        iy = by + ky * dh
        for kx in range(kw):
            valid = vy & (kx >= kx0) & (kx < kx1)
            if not valid.any():
                continue
            ix = bx + kx * dw
            xv = _np_read(vals, slot, n, c0 + best_c, iy, ix, nc, bh, bw, vpt, vpl, padval)
            with np.errstate(invalid="ignore", over="ignore"):
                v = xv * w[wc + ky * kw + kx].astype(np.float64)
            upd = valid & _np_better(v, best_v, found)
            best_v = np.where(upd, v, best_v)
            best_y = np.where(upd, iy, best_y)
            best_x = np.where(upd, ix, best_x)
            found |= upd
    return ((n * nc + c0 + best_c) * hv + best_y) * wv + best_x


def _np_pool(locs, ip, fp, p, vals):
    nc, hv, wv, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, slot, bh, bw, vpt, vpl = (int(v) for v in ip[p + 1:p + 19])
    padval = float(fp[ip[p + 19]])
    ox = locs % ow
    f = locs // ow
    oy = f % oh
    nci = f // oh
    by, bx = oy * sh - pt, ox * sw - pl
    ky0, ky1 = _np_range(by, kh, dh, hv)
    kx0, kx1 = _np_range(bx, kw, dw, wv)
    keep = (ky0 < ky1) & (kx0 < kx1)
    nci, by, bx, ky0, ky1, kx0, kx1 = (a[keep] for a in (nci, by, bx, ky0, ky1, kx0, kx1))
    best_v = np.zeros(len(nci), np.float64)
    best_y = np.full(len(nci), -1, np.int64)
    best_x = np.full(len(nci), -1, np.int64)
    found = np.zeros(len(nci), np.bool_)
    for ky in range(kh):
        vy = (ky >= ky0) & (ky < ky1)
        iy = by + ky * dh
        for kx in range(kw):
            valid = vy & (kx >= kx0) & (kx < kx1)
            if not valid.any():
                continue
            ix = bx + kx * dw
            v = _np_read(vals, slot, nci // nc, nci % nc, iy, ix, nc, bh, bw, vpt, vpl, padval)
            upd = valid & _np_better(v, best_v, found)
            best_v = np.where(upd, v, best_v)
            best_y = np.where(upd, iy, best_y)
            best_x = np.where(upd, ix, best_x)
            found |= upd
    return (nci * hv + best_y) * wv + best_x


def _np_gpool(locs, ip, p, vals):
    r, slot = int(ip[p]), int(ip[p + 1])
    base = locs * r
    if r == 0 or len(locs) == 0:
        return base
    return base + np.argmax(vals[slot][base[:, None] + np.arange(r)], axis=1)


def _np_fc(locs, ip, p, vals, w):
    k_dim, n_dim, mode, slot, w_off = (int(v) for v in ip[p + 1:p + 6])
    mm, nn = locs // n_dim, locs % n_dim
    k = np.arange(k_dim)
    with np.errstate(invalid="ignore", over="ignore"):
        prod = (vals[slot][mm[:, None] * k_dim + k].astype(np.float64)
                * w[w_off + k * n_dim + nn[:, None]].astype(np.float64))
    if mode == 1:
        return mm * k_dim + (np.argmax(prod, axis=1) if k_dim else 0)
    with np.errstate(invalid="ignore"):
        i, kk = np.nonzero(prod > 0.0)
    return mm[i] * k_dim + kk


def run_plan_numpy(steps, ip, fp, w, vals, n_tensors, start_t, start_flat):
    """:func:`run_plan` in numpy (the same sets; ``vals``: the activations as flat float32 arrays per slot)."""
    chunks: list[list[np.ndarray]] = [[] for _ in range(n_tensors)]
    final: list[np.ndarray | None] = [None] * n_tensors
    sent = np.zeros(n_tensors, np.bool_)
    sent[start_t] = True
    chunks[start_t].append(np.asarray(start_flat, np.int64))
    empty = np.zeros(0, np.int64)

    def finish(t: int) -> None:
        if final[t] is None:
            final[t] = np.unique(np.concatenate(chunks[t])) if chunks[t] else empty

    for s in range(steps.shape[0]):
        op, o, t_in, p, flag = (int(v) for v in steps[s])
        finish(o)
        locs = final[o]
        if len(locs) == 0:
            continue
        if op == ADD:
            targets, flats, win = _np_add(locs, ip, fp, p, vals)
            for j, t in enumerate(targets):
                if t >= 0:
                    sent[t] = True
                    chunks[t].append(flats[j][win == j])
            continue
        if op == FLAT:
            res = locs
        elif op == MAP:
            res = _np_map(locs, ip, p)
        elif op == CONV:
            res = _np_conv(locs, ip, fp, p, vals, w)
        elif op == POOL:
            res = _np_pool(locs, ip, fp, p, vals)
        elif op == GPOOL:
            res = _np_gpool(locs, ip, p, vals)
        else:
            res = _np_fc(locs, ip, p, vals, w)
        if flag == 1 and len(res) == 0:
            continue
        sent[t_in] = True
        chunks[t_in].append(np.asarray(res, np.int64))
    for t in range(n_tensors):
        finish(t)
    offsets = np.zeros(n_tensors + 1, np.int64)
    offsets[1:] = np.cumsum([len(f) for f in final])
    return np.concatenate(final) if n_tensors else empty, offsets, sent
