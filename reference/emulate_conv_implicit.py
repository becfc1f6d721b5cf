#!/usr/bin/env python3
"""Index emulation of kernels/conv_implicit.cu (no GPU needed).

Mirrors, loop by loop, the kernels' block / thread / chunk structure and every index they
compute: the per-block pixel table (rowb, iy0, ix0), the per-thread tap decoding of its K column,
the gather of A and of the weight tile into the shared-memory layouts (simt: k-major As[BK][LDA],
Bs[BK][LDB]; tc: As[BM][LDA], Bs[BN][LDA] with LDA = 36 / 40), the compute mapping (simt: each
thread a 4×4 register block at (4·ty, 4·tx); tc: warp (wm, wn) 2×2 fragments of 16×16 over
k-steps of 8 / 16, read as row-major A and col-major B), the tc staging tile Cs[BM][LDC] and the
epilogue's element mapping and masks. Arithmetic is float64 (operand rounding is not emulated:
this checks indices, not precision). Threads of a block are vectorised with numpy index arrays;
shared memory is poisoned with NaN before each use so a read of an unwritten slot shows up.

Compared against a direct float64 convolution with the fused epilogue.

It mirrors the tc kernels' VEC = 1 staging (one K column per lane); the float2/float4 staging
(VEC = 2, 4), the phase kernels of the strided data gradient (conv_phase_*) and every other path
run for real under tools/cuda-emu (tests/gpu_conv.rs).

Run: .torch-venv/bin/python reference/emulate_conv_implicit.py
"""

import sys

import numpy as np


def direct(x, w, bias, res, relu, s, p):
    b, h, wd, cin = x.shape
    cout, k, _, _ = w.shape
    ho = (h + 2 * p - k) // s + 1
    wo = (wd + 2 * p - k) // s + 1
    xp = np.zeros((b, h + 2 * p, wd + 2 * p, cin))
    xp[:, p:p + h, p:p + wd, :] = x
    y = np.zeros((b, ho, wo, cout))
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s, :]
            y += np.einsum("bhwc,oc->bhwo", patch, w[:, ky, kx, :])
    if bias is not None:
        y = y + bias
    if res is not None:
        y = y + res
    if relu:
        y = np.where(y < 0, 0.0, y)
    return y


def pixel_table(bm, m0, mtotal, ho, wo, h, stride, pad):
    i = np.arange(bm)
    m = m0 + i
    ok = m < mtotal
    ox = m % wo
    t = m // wo
    oy = t % ho
    b = t // ho
    rowb = np.where(ok, b * h, -1)
    iy0 = np.where(ok, oy * stride - pad, 0)
    ix0 = np.where(ok, ox * stride - pad, 0)
    return rowb, iy0, ix0


def tap_of(kg, kdim, cin, k):
    ok = kg < kdim
    kidx = kg // cin
    ci = kg - kidx * cin
    ky = kidx // k
    kx = kidx - ky * k
    return ky, kx, ci, ok


def gather_a(xf, rowb, iy0, ix0, ky, kx, ci, ok, h, w, cin):
    """xf: x flattened; all arguments are broadcastable arrays (one entry per thread)."""
    iy = iy0 + ky
    ix = ix0 + kx
    valid = (rowb >= 0) & ok & (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    off = ((rowb + iy) * w + ix) * cin + ci
    off = np.where(valid, off, 0)
    assert np.all(off >= 0) and np.all(off < xf.size), "gather out of range"
    return np.where(valid, xf[off], 0.0)


def gather_w(wf, n, cout, kg, ok, kdim):
    valid = ok & (n < cout)
    off = np.where(valid, n * kdim + kg, 0)
    assert np.all(off < max(wf.size, 1))
    return np.where(valid, wf[off] if wf.size else 0.0, 0.0)


def epilogue(acc, bias, res_f, idx, n, relu):
    t = acc
    if bias is not None:
        t = t + bias[n]
    if res_f is not None:
        t = t + res_f[idx]
    return np.where(relu & (t < 0), 0.0, t) if relu else t


def run_simt(x, w, bias, res, relu, s, p):
    BM, BN, BK, THREADS, TM, TN = 64, 64, 16, 256, 4, 4
    LDA, LDB = BM + 4, BN + 4
    ROWS = THREADS // BK
    A_PER, B_PER = BM // ROWS, BN // ROWS
    b, h, wd, cin = x.shape
    cout, k = w.shape[0], w.shape[1]
    ho = (h + 2 * p - k) // s + 1
    wo = (wd + 2 * p - k) // s + 1
    mtotal, kdim = b * ho * wo, k * k * cin
    xf, wf = x.reshape(-1), w.reshape(-1)
    res_f = None if res is None else res.reshape(-1)
    y = np.full(mtotal * cout, np.nan)
    written = np.zeros(mtotal * cout, dtype=int)
    tid = np.arange(THREADS)
    kl, r0 = tid % BK, tid // BK
    tx, ty = tid % 16, tid // 16
    nk = (kdim + BK - 1) // BK
    for bx in range((mtotal + BM - 1) // BM):
        for by in range((cout + BN - 1) // BN):
            m0, n0 = bx * BM, by * BN
            rowb, iy0, ix0 = pixel_table(BM, m0, mtotal, ho, wo, h, s, p)
            acc = np.zeros((THREADS, TM, TN))

            def load(k0):
                kg = k0 + kl
                ky, kx, ci, ok = tap_of(kg, kdim, cin, k)
                ra = np.zeros((THREADS, A_PER))
                rb = np.zeros((THREADS, B_PER))
                for j in range(A_PER):
                    ml = r0 + ROWS * j
                    ra[:, j] = gather_a(xf, rowb[ml], iy0[ml], ix0[ml], ky, kx, ci, ok, h, wd, cin)
                for j in range(B_PER):
                    rb[:, j] = gather_w(wf, n0 + r0 + ROWS * j, cout, kg, ok, kdim)
                return ra, rb

            if nk > 0:
                ra, rb = load(0)
            for c in range(nk):
                As = np.full((BK, LDA), np.nan)
                Bs = np.full((BK, LDB), np.nan)
                for j in range(A_PER):
                    As[kl, r0 + ROWS * j] = ra[:, j]
                for j in range(B_PER):
                    Bs[kl, r0 + ROWS * j] = rb[:, j]
                if c + 1 < nk:
                    ra, rb = load((c + 1) * BK)
                for kk in range(BK):
                    a = np.stack([As[kk, ty * TM + i] for i in range(TM)], 1)  # float4 at 4·ty
                    bb = np.stack([Bs[kk, tx * TN + j] for j in range(TN)], 1)
                    acc += a[:, :, None] * bb[:, None, :]
            for i in range(TM):
                m = m0 + ty * TM + i
                for j in range(TN):
                    n = n0 + tx * TN + j
                    ok = (m < mtotal) & (n < cout)
                    idx = m * cout + n
                    val = epilogue(acc[:, i, j], bias, res_f, np.where(ok, idx, 0), np.where(ok, n, 0), relu)
                    y[idx[ok]] = val[ok]
                    np.add.at(written, idx[ok], 1)
    assert np.all(written == 1), "simt: some output written %s times" % sorted(set(written))
    return y.reshape(b, ho, wo, cout)


def run_tc(x, w, bias, res, relu, s, p, op_k, lda):
    BM, BN, BK, THREADS = 64, 64, 32, 128
    LDC = BN + 4
    ROWS = THREADS // BK
    A_PER, B_PER = BM // ROWS, BN // ROWS
    b, h, wd, cin = x.shape
    cout, k = w.shape[0], w.shape[1]
    ho = (h + 2 * p - k) // s + 1
    wo = (wd + 2 * p - k) // s + 1
    mtotal, kdim = b * ho * wo, k * k * cin
    xf, wf = x.reshape(-1), w.reshape(-1)
    res_f = None if res is None else res.reshape(-1)
    y = np.full(mtotal * cout, np.nan)
    written = np.zeros(mtotal * cout, dtype=int)
    tid = np.arange(THREADS)
    lane, warp = tid & 31, tid >> 5
    nk = (kdim + BK - 1) // BK
    for bx in range((mtotal + BM - 1) // BM):
        for by in range((cout + BN - 1) // BN):
            m0, n0 = bx * BM, by * BN
            rowb, iy0, ix0 = pixel_table(BM, m0, mtotal, ho, wo, h, s, p)
            acc = np.zeros((4, 2, 2, 16, 16))  # per warp: 2×2 fragments

            def load(k0):
                kg = k0 + lane
                ky, kx, ci, ok = tap_of(kg, kdim, cin, k)
                ra = np.zeros((THREADS, A_PER))
                rb = np.zeros((THREADS, B_PER))
                for j in range(A_PER):
                    ml = warp + ROWS * j
                    ra[:, j] = gather_a(xf, rowb[ml], iy0[ml], ix0[ml], ky, kx, ci, ok, h, wd, cin)
                for j in range(B_PER):
                    rb[:, j] = gather_w(wf, n0 + warp + ROWS * j, cout, kg, ok, kdim)
                return ra, rb

            if nk > 0:
                ra, rb = load(0)
            for c in range(nk):
                smem_as = np.full(BM * lda, np.nan)
                smem_bs = np.full(BN * lda, np.nan)
                for j in range(A_PER):
                    smem_as[(warp + ROWS * j) * lda + lane] = ra[:, j]
                for j in range(B_PER):
                    smem_bs[(warp + ROWS * j) * lda + lane] = rb[:, j]
                if c + 1 < nk:
                    ra, rb = load((c + 1) * BK)
                for kk in range(0, BK, op_k):
                    for wv in range(4):
                        wm, wn = wv >> 1, wv & 1
                        for i in range(2):
                            # load_matrix_sync row_major A: element (r, q) at base + r·ld + q
                            base_a = (wm * 32 + i * 16) * lda + kk
                            fa = np.array([[smem_as[base_a + r * lda + q] for q in range(op_k)] for r in range(16)])
                            for j in range(2):
                                # col_major B (K × N): element (q, cc) at base + cc·ld + q
                                base_b = (wn * 32 + j * 16) * lda + kk
                                fb = np.array([[smem_bs[base_b + cc * lda + q] for cc in range(16)] for q in range(op_k)])
                                acc[wv, i, j] += fa @ fb
            cs = np.full(BM * LDC, np.nan)
            for wv in range(4):
                wm, wn = wv >> 1, wv & 1
                for i in range(2):
                    for j in range(2):
                        base = (wm * 32 + i * 16) * LDC + wn * 32 + j * 16
                        for r in range(16):
                            cs[base + r * LDC: base + r * LDC + 16] = acc[wv, i, j, r]
            for e0 in range(0, BM * BN, THREADS):
                e = e0 + tid
                e = e[e < BM * BN]
                ml, nl = e // BN, e - (e // BN) * BN
                m, n = m0 + ml, n0 + nl
                ok = (m < mtotal) & (n < cout)
                idx = m * cout + n
                val = epilogue(cs[ml * LDC + nl], bias, res_f, np.where(ok, idx, 0), np.where(ok, n, 0), relu)
                y[idx[ok]] = val[ok]
                np.add.at(written, idx[ok], 1)
    assert np.all(written == 1), "tc: some output written %s times" % sorted(set(written))
    return y.reshape(b, ho, wo, cout)


def main():
    rng = np.random.default_rng(7)
    # (name, B, H, W, Cin, Cout, k, stride, pad)
    shapes = [
        ("7x5 cin3 cout5 k3 s1 p1", 2, 7, 5, 3, 5, 3, 1, 1),
        ("8x8 cin1 k3 p0", 2, 8, 8, 1, 4, 3, 1, 0),
        ("6x6 k4 p0", 2, 6, 6, 5, 3, 4, 1, 0),
        ("9x11 k3 s2 p1 cin13 cout17", 2, 9, 11, 13, 17, 3, 2, 1),
        ("W30 19x19 cin120 cout120 k3 s1 p1", 1, 19, 19, 120, 120, 3, 1, 1),
        ("W30 stride-2 19->10 cin120 cout70 (N tail)", 1, 19, 19, 120, 70, 3, 2, 1),
    ]
    worst = 0.0
    fails = 0
    for name, b, h, wd, cin, cout, k, s, p in shapes:
        x = rng.standard_normal((b, h, wd, cin))
        w = rng.standard_normal((cout, k, k, cin))
        bias = rng.standard_normal(cout)
        ho = (h + 2 * p - k) // s + 1
        wo = (wd + 2 * p - k) // s + 1
        res = rng.standard_normal((b, ho, wo, cout))
        variants = [(None, None, False), (bias, None, False), (bias, res, True), (bias, None, True), (bias, res, False)]
        # The W30-sized shapes are slow in Python: the tc emulation runs on fewer variants there.
        big = b * ho * wo * cout > 20000
        for vi, (bb, rr, relu) in enumerate(variants):
            ref = direct(x, w, bb, rr, relu, s, p)
            runs = [("simt", lambda: run_simt(x, w, bb, rr, relu, s, p))]
            if not big or vi in (0, 2):
                runs += [
                    ("tf32", lambda: run_tc(x, w, bb, rr, relu, s, p, 8, 36)),
                    ("bf16", lambda: run_tc(x, w, bb, rr, relu, s, p, 16, 40)),
                ]
            for ver, f in runs:
                got = f()
                err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-300)
                ok = np.all(np.isfinite(got)) and err < 1e-12
                worst = max(worst, err if np.isfinite(err) else np.inf)
                fails += not ok
                print(f"{'ok ' if ok else 'FAIL'} {ver:4} {name:44} bias={bb is not None:d} "
                      f"res={rr is not None:d} relu={relu:d}  rel err {err:.2e}")
    print(f"worst relative error {worst:.2e}; {fails} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
