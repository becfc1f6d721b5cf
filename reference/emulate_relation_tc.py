# Lane-level emulation of kernels/relation_tc.cu (v1 at the WMMA API level, v2 at the mma.sync
# fragment level), in float64, to validate the index math against a dense reference without a
# GPU. It checks indexing (tiles, fragments, bins, tails), not the hardware.
#
#   python3 reference/emulate_relation_tc.py          # exact arithmetic: errors ~1e-15
#   python3 reference/emulate_relation_tc.py round    # with TF32/BF16 operand rounding
#
# Keep it in step with the kernels when their tiling changes.
import numpy as np, sys, math
RND = None
def tf32r(x):
    x32 = np.asarray(x, dtype=np.float32).copy(); i = x32.view(np.int32)
    i[:] = (i + 0x1000) & ~0x1FFF
    return i.view(np.float32).astype(np.float64)
def bf16r(x):
    x32 = np.asarray(x, dtype=np.float32).copy(); i = x32.view(np.uint32).astype(np.uint64)
    i = (i + 0x7FFF + ((i >> 16) & 1)) & 0xFFFF0000
    return i.astype(np.uint32).view(np.float32).astype(np.float64)
def R(x): return x if RND is None else RND(x)

def adaptive_start(u, L, n): return (u * L) // n
def adaptive_end(u, L, n): return ((u + 1) * L + n - 1) // n
def bins_of(i, L, n):
    u = (i * n) // L
    lo = hi = u
    while lo > 0 and adaptive_end(lo - 1, L, n) > i: lo -= 1
    while hi + 1 < n and adaptive_start(hi + 1, L, n) <= i: hi += 1
    return lo, hi
NO_BINS = 0x00FF00FF
def pack_bins(j, h, w, n):
    y, x = divmod(j, w)
    vf, vl = bins_of(y, h, n); uf, ul = bins_of(x, w, n)
    return vf | (vl << 8) | (uf << 16) | (ul << 24)
def in_bin(pk, vu):
    v, u = vu & 0xFF, vu >> 8
    return v >= (pk & 0xFF) and v <= ((pk >> 8) & 0xFF) and u >= ((pk >> 16) & 0xFF) and u <= (pk >> 24)
def bins_sum_packed(gt, rowoff, n, pk):
    vf, vl, uf, ul = pk & 0xFF, (pk >> 8) & 0xFF, (pk >> 16) & 0xFF, pk >> 24
    g = 0.0
    for v in range(vf, vl + 1):
        for u in range(uf, ul + 1):
            g += gt[rowoff + v * n + u]
    return g
def bin_size(v, u, h, w, n):
    return (adaptive_end(v, h, n) - adaptive_start(v, h, n)) * (adaptive_end(u, w, n) - adaptive_start(u, w, n))

# ---- dense reference ----
def member(h, w, n):
    B = np.zeros((h * w, n * n))
    for v in range(n):
        y0, y1 = adaptive_start(v, h, n), adaptive_end(v, h, n)
        for u in range(n):
            x0, x1 = adaptive_start(u, w, n), adaptive_end(u, w, n)
            m = np.zeros((h, w)); m[y0:y1, x0:x1] = 1
            B[:, v * n + u] = m.reshape(-1)
    return B, B.sum(0)
def dense(f, G, h, w, n):
    nrm = np.linalg.norm(f, axis=1); q = f / np.maximum(nrm, 1e-12)[:, None]
    B, sizes = member(h, w, n)
    S = q @ q.T; e = np.exp(S - 1); l = e.sum(1)
    P = (e @ B) / (l[:, None] * sizes[None, :])
    D = (P * G).sum(1); gt = G / sizes[None, :]; g = gt @ B.T
    dS = e / l[:, None] * (g - D[:, None])
    dq = (dS + dS.T) @ q
    dot = (q * dq).sum(1, keepdims=True)
    df = (dq - q * dot) / nrm[:, None]
    return P, l, df

# ---- fragment semantics (per warp; arrays indexed by lane) ----
LANES = np.arange(32); G_ = LANES >> 2; T_ = LANES & 3
def mma_tf32(d, a, b0, b1):
    # d: [32,4], a: [32,4], b0,b1: [32]
    A = np.zeros((16, 8)); B = np.zeros((8, 8))
    A[G_, T_] = a[:, 0]; A[G_ + 8, T_] = a[:, 1]; A[G_, T_ + 4] = a[:, 2]; A[G_ + 8, T_ + 4] = a[:, 3]
    B[T_, G_] = b0; B[T_ + 4, G_] = b1
    C = np.zeros((16, 8))
    C[G_, 2 * T_] = d[:, 0]; C[G_, 2 * T_ + 1] = d[:, 1]; C[G_ + 8, 2 * T_] = d[:, 2]; C[G_ + 8, 2 * T_ + 1] = d[:, 3]
    C = C + A @ B
    return np.stack([C[G_, 2 * T_], C[G_, 2 * T_ + 1], C[G_ + 8, 2 * T_], C[G_ + 8, 2 * T_ + 1]], 1)
def mma_bf16(d, a, b0, b1):
    # a: [32,4,2] (lo, hi), b0,b1: [32,2]
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for q in range(2):
        A[G_, 2 * T_ + q] = a[:, 0, q]; A[G_ + 8, 2 * T_ + q] = a[:, 1, q]
        A[G_, 2 * T_ + 8 + q] = a[:, 2, q]; A[G_ + 8, 2 * T_ + 8 + q] = a[:, 3, q]
        B[2 * T_ + q, G_] = b0[:, q]; B[2 * T_ + 8 + q, G_] = b1[:, q]
    C = np.zeros((16, 8))
    C[G_, 2 * T_] = d[:, 0]; C[G_, 2 * T_ + 1] = d[:, 1]; C[G_ + 8, 2 * T_] = d[:, 2]; C[G_ + 8, 2 * T_ + 1] = d[:, 3]
    C = C + A @ B
    return np.stack([C[G_, 2 * T_], C[G_, 2 * T_ + 1], C[G_ + 8, 2 * T_], C[G_ + 8, 2 * T_ + 1]], 1)

TF32 = dict(IS_TF32=True, LDA=36, KSTEP=8)
BF16 = dict(IS_TF32=False, LDA=40, KSTEP=16)
KC = 32; STAGES = 3

def frag_a(Op, s, r0, k0):
    L = Op['LDA']; g, t = G_, T_
    if Op['IS_TF32']:
        return np.stack([s[(r0 + g) * L + k0 + t], s[(r0 + g + 8) * L + k0 + t], s[(r0 + g) * L + k0 + t + 4], s[(r0 + g + 8) * L + k0 + t + 4]], 1)
    # bf16: each reg = pair (elem at idx, idx+1)
    def pair(idx): return np.stack([s[idx], s[idx + 1]], 1)
    return np.stack([pair((r0 + g) * L + k0 + 2 * t), pair((r0 + g + 8) * L + k0 + 2 * t), pair((r0 + g) * L + k0 + 2 * t + 8), pair((r0 + g + 8) * L + k0 + 2 * t + 8)], 1)
def frag_b(Op, s, c0, k0):
    L = Op['LDA']; g, t = G_, T_
    if Op['IS_TF32']:
        return s[(c0 + g) * L + k0 + t], s[(c0 + g) * L + k0 + t + 4]
    def pair(idx): return np.stack([s[idx], s[idx + 1]], 1)
    return pair((c0 + g) * L + k0 + 2 * t), pair((c0 + g) * L + k0 + 2 * t + 8)
def mma(Op, d, a, b0, b1):
    return mma_tf32(d, a, b0, b1) if Op['IS_TF32'] else mma_bf16(d, a, b0, b1)
def stage(dst, dst_off, src, src_off, rows, ld, k0, L):
    for r in range(rows):
        dst[dst_off + r * L: dst_off + r * L + KC] = src[src_off + r * ld + k0: src_off + r * ld + k0 + KC]

def operand(f, B, npix, npad, c, cpad, h, w, n):
    qop = np.zeros(B * npad * cpad); norms = np.zeros(B * npix); pix = np.full(npad, NO_BINS, dtype=np.int64)
    for i in range(npix): pix[i] = pack_bins(i, h, w, n)
    for b in range(B):
        for i in range(npix):
            fr = f[(b * npix + i) * c:(b * npix + i + 1) * c]
            nr = math.sqrt((fr * fr).sum()); inv = 1 / max(nr, 1e-12)
            qop[(b * npad + i) * cpad:(b * npad + i) * cpad + c] = R(fr * inv)
            norms[b * npix + i] = nr
    return qop, norms, pix

# ---- v2 forward ----
def v2_forward(Op, NBT, qop, pix, B, npix, npad, cpad, h, w, n):
    BM = BN = 128; L = Op['LDA']; STAGE = (BM + BN) * L
    nb = n * n; lsum = np.full(B * npix, np.nan); P = np.full(B * npix * nb, np.nan)
    nk = cpad // KC; nj = (npix + BN - 1) // BN; total = nj * nk
    for b in range(B):
        for bx in range((npix + BM - 1) // BM):
            i0 = bx * BM; qb = b * npad * cpad
            stages = np.zeros(STAGES * STAGE)
            warps = []
            for warp in range(8):
                wr, wc = warp >> 1, warp & 1
                bvu = []
                for bt in range(NBT):
                    binv = bt * 8 + G_; v = binv // n
                    bvu.append(np.where(binv < nb, v | ((binv - v * n) << 8), 0xFFFF))
                warps.append(dict(wr=wr, wc=wc, acc=np.zeros((2, 8, 32, 4)), bacc=np.zeros((2, NBT, 32, 4)), lrow=np.zeros((2, 2, 32)), bvu=bvu))
            def load(u):
                jt, kc = divmod(u, nk); so = (u % STAGES) * STAGE
                stage(stages, so, qop, qb + i0 * cpad, BM, cpad, kc * KC, L)
                stage(stages, so + BM * L, qop, qb + jt * BN * cpad, BN, cpad, kc * KC, L)
            loaded = set()
            for s_ in range(STAGES - 1):
                if s_ < total: load(s_); loaded.add(s_)
            for u in range(total):
                if u + STAGES - 1 < total: load(u + STAGES - 1)
                so = (u % STAGES) * STAGE
                sI = stages[so:so + BM * L]; sJ = stages[so + BM * L: so + STAGE]
                jt = u // nk
                for W in warps:
                    wr, wc = W['wr'], W['wc']
                    for k0 in range(0, KC, Op['KSTEP']):
                        a0 = frag_a(Op, sI, wr * 32, k0); a1 = frag_a(Op, sI, wr * 32 + 16, k0)
                        for x in range(8):
                            b0, b1 = frag_b(Op, sJ, wc * 64 + x * 8, k0)
                            W['acc'][0, x] = mma(Op, W['acc'][0, x], a0, b0, b1)
                            W['acc'][1, x] = mma(Op, W['acc'][1, x], a1, b0, b1)
                if u - jt * nk != nk - 1: continue
                for W in warps:
                    wr, wc = W['wr'], W['wc']; acc = W['acc']
                    jw = jt * BN + wc * 64
                    for x in range(8):
                        j = jw + x * 8 + 2 * T_
                        v0 = j < npix; v1 = j + 1 < npix
                        for m in range(2):
                            c = acc[m, x]
                            c[:, 0] = np.where(v0, np.exp(c[:, 0] - 1), 0); c[:, 1] = np.where(v1, np.exp(c[:, 1] - 1), 0)
                            c[:, 2] = np.where(v0, np.exp(c[:, 2] - 1), 0); c[:, 3] = np.where(v1, np.exp(c[:, 3] - 1), 0)
                            W['lrow'][m, 0] += c[:, 0] + c[:, 1]; W['lrow'][m, 1] += c[:, 2] + c[:, 3]
                    if Op['IS_TF32']:
                        for x in range(8):
                            j = jw + x * 8 + 2 * T_
                            pk0 = pix[j]; pk1 = pix[j + 1]
                            for bt in range(NBT):
                                b0 = np.array([1.0 if in_bin(int(pk0[l]), int(W['bvu'][bt][l])) else 0.0 for l in range(32)])
                                b1 = np.array([1.0 if in_bin(int(pk1[l]), int(W['bvu'][bt][l])) else 0.0 for l in range(32)])
                                for m in range(2):
                                    a = R(np.stack([acc[m, x, :, 0], acc[m, x, :, 2], acc[m, x, :, 1], acc[m, x, :, 3]], 1))
                                    W['bacc'][m, bt] = mma_tf32(W['bacc'][m, bt], a, b0, b1)
                    else:
                        for y in range(4):
                            ja = jw + 2 * y * 8 + 2 * T_; jb = ja + 8
                            pa0, pa1, pb0, pb1 = pix[ja], pix[ja + 1], pix[jb], pix[jb + 1]
                            for bt in range(NBT):
                                mem = lambda pk: np.array([1.0 if in_bin(int(pk[l]), int(W['bvu'][bt][l])) else 0.0 for l in range(32)])
                                b0 = np.stack([mem(pa0), mem(pa1)], 1); b1 = np.stack([mem(pb0), mem(pb1)], 1)
                                for m in range(2):
                                    a = np.stack([np.stack([acc[m, 2*y, :, 0], acc[m, 2*y, :, 1]], 1), np.stack([acc[m, 2*y, :, 2], acc[m, 2*y, :, 3]], 1),
                                                  np.stack([acc[m, 2*y+1, :, 0], acc[m, 2*y+1, :, 1]], 1), np.stack([acc[m, 2*y+1, :, 2], acc[m, 2*y+1, :, 3]], 1)], 1)
                                    a = R(a)
                                    W['bacc'][m, bt] = mma_bf16(W['bacc'][m, bt], a, b0, b1)
                    W['acc'][:] = 0
            # quad reduce
            for W in warps:
                for m in range(2):
                    for hh in range(2):
                        l = W['lrow'][m, hh]
                        l = l + l[LANES ^ 1]; l = l + l[LANES ^ 2]
                        W['lrow'][m, hh] = l
            RLD = NBT * 8 + 1
            red = np.full(BM * RLD, np.nan)
            for W in warps:
                if W['wc'] != 1: continue
                wr = W['wr']
                for m in range(2):
                    for hh in range(2):
                        rl = wr * 32 + m * 16 + G_ + 8 * hh
                        sel = T_ == 0
                        red[(rl * RLD + NBT * 8)[sel]] = W['lrow'][m, hh][sel]
                        for bt in range(NBT):
                            red[rl * RLD + bt * 8 + 2 * T_] = W['bacc'][m, bt][:, 2 * hh]
                            red[rl * RLD + bt * 8 + 2 * T_ + 1] = W['bacc'][m, bt][:, 2 * hh + 1]
            for W in warps:
                if W['wc'] != 0: continue
                wr = W['wr']
                for m in range(2):
                    for hh in range(2):
                        for lane in range(32):
                            g, tq = lane >> 2, lane & 3
                            rl = wr * 32 + m * 16 + g + 8 * hh; i = i0 + rl
                            if i >= npix: continue
                            l = W['lrow'][m, hh][lane] + red[rl * RLD + NBT * 8]
                            for bt in range(NBT):
                                for q in range(2):
                                    binv = bt * 8 + 2 * tq + q
                                    if binv >= nb: continue
                                    v, uu = divmod(binv, n)
                                    s_ = W['bacc'][m, bt][lane, 2 * hh + q] + red[rl * RLD + bt * 8 + 2 * tq + q]
                                    P[(b * npix + i) * nb + binv] = s_ / (l * bin_size(v, uu, h, w, n))
                            if tq == 0: lsum[b * npix + i] = l
    return P, lsum

# ---- v2 backward ----
def v2_backward(Op, qop, pix, f, qnorm, norms, lsum, dvec, gt, B, npix, npad, c, cpad, n):
    BM = BN = 64; L = Op['LDA']; STAGE = (BM + BN) * L
    nb = n * n; ldq = cpad + 8
    nk = cpad // KC; nj = (npix + BN - 1) // BN; total = nj * 2 * nk
    df = np.zeros(B * npix * c)
    for b in range(B):
        base = b * npix
        for bx in range((npix + BM - 1) // BM):
            i0 = bx * BM; qb = b * npad * cpad
            dq = np.zeros(BM * ldq); stages = np.zeros(STAGES * STAGE)
            warps = []
            for warp in range(4):
                wr, wc = warp >> 1, warp & 1
                W = dict(wr=wr, wc=wc, acc=np.zeros((2, 4, 32, 4)), pkI={}, invlI={}, dI={}, gtI={})
                for m in range(2):
                    for hh in range(2):
                        i = i0 + wr * 32 + m * 16 + G_ + 8 * hh
                        ok = i < npix
                        W['pkI'][m, hh] = pix[i]
                        W['invlI'][m, hh] = np.where(ok, 1 / lsum[base + np.minimum(i, npix - 1)], 0)
                        W['dI'][m, hh] = np.where(ok, dvec[base + np.minimum(i, npix - 1)], 0)
                        W['gtI'][m, hh] = (base + np.where(ok, i, 0)) * nb
                warps.append(W)
            def load(u):
                jt, r = divmod(u, 2 * nk); so = (u % STAGES) * STAGE
                if r < nk:
                    stage(stages, so, qop, qb + i0 * cpad, BM, cpad, r * KC, L)
                    stage(stages, so + BM * L, qop, qb + jt * BN * cpad, BN, cpad, r * KC, L)
                else:
                    stage(stages, so + BM * L, qop, qb + jt * BN * cpad, BN, cpad, (r - nk) * KC, L)
            for s_ in range(STAGES - 1):
                if s_ < total: load(s_)
            for u in range(total):
                if u + STAGES - 1 < total: load(u + STAGES - 1)
                so = (u % STAGES) * STAGE
                sI = stages[so:so + BM * L]; sJ = stages[so + BM * L:so + STAGE]
                jt, r = divmod(u, 2 * nk)
                if r < nk:
                    for W in warps:
                        wr, wc = W['wr'], W['wc']
                        for k0 in range(0, KC, Op['KSTEP']):
                            a0 = frag_a(Op, sI, wr * 32, k0); a1 = frag_a(Op, sI, wr * 32 + 16, k0)
                            for x in range(4):
                                b0, b1 = frag_b(Op, sJ, wc * 32 + x * 8, k0)
                                W['acc'][0, x] = mma(Op, W['acc'][0, x], a0, b0, b1)
                                W['acc'][1, x] = mma(Op, W['acc'][1, x], a1, b0, b1)
                    if r != nk - 1: continue
                    for W in warps:
                        wr, wc = W['wr'], W['wc']; acc = W['acc']
                        for x in range(4):
                            for q in range(2):
                                for lane in range(32):
                                    tq = lane & 3
                                    j = jt * BN + wc * 32 + x * 8 + 2 * tq + q
                                    okj = j < npix
                                    pkJ = int(pix[j])
                                    invlJ = 1 / lsum[base + j] if okj else 0.0
                                    dJ = dvec[base + j] if okj else 0.0
                                    gtJ = (base + (j if okj else 0)) * nb
                                    for m in range(2):
                                        for hh in range(2):
                                            v = acc[m, x, lane, 2 * hh + q]; mv = 0.0
                                            pkI = int(W['pkI'][m, hh][lane])
                                            if okj and pkI != NO_BINS:
                                                ex = math.exp(v - 1)
                                                gij = bins_sum_packed(gt, int(W['gtI'][m, hh][lane]), n, pkJ)
                                                gji = bins_sum_packed(gt, gtJ, n, pkI)
                                                mv = ex * W['invlI'][m, hh][lane] * (gij - W['dI'][m, hh][lane]) + ex * invlJ * (gji - dJ)
                                            acc[m, x, lane, 2 * hh + q] = mv
                        if Op['IS_TF32']:
                            W['mf'] = {(m, x): R(np.stack([acc[m, x, :, 0], acc[m, x, :, 2], acc[m, x, :, 1], acc[m, x, :, 3]], 1)) for m in range(2) for x in range(4)}
                        else:
                            W['mf'] = {(m, y): R(np.stack([np.stack([acc[m, 2*y, :, 0], acc[m, 2*y, :, 1]], 1), np.stack([acc[m, 2*y, :, 2], acc[m, 2*y, :, 3]], 1),
                                                         np.stack([acc[m, 2*y+1, :, 0], acc[m, 2*y+1, :, 1]], 1), np.stack([acc[m, 2*y+1, :, 2], acc[m, 2*y+1, :, 3]], 1)], 1))
                                       for m in range(2) for y in range(2)}
                        W['acc'][:] = 0
                    continue
                cc = r - nk
                for half in range(2):
                    for W in warps:
                        wr, wc = W['wr'], W['wc']
                        ct0 = ((wc + half) & 1) * 2
                        d = np.zeros((2, 2, 32, 4))
                        for m in range(2):
                            for z in range(2):
                                row = wr * 32 + m * 16 + G_; col = cc * KC + (ct0 + z) * 8 + 2 * T_
                                d[m, z, :, 0] = dq[row * ldq + col]; d[m, z, :, 1] = dq[row * ldq + col + 1]
                                d[m, z, :, 2] = dq[(row + 8) * ldq + col]; d[m, z, :, 3] = dq[(row + 8) * ldq + col + 1]
                        if Op['IS_TF32']:
                            for x in range(4):
                                jl = wc * 32 + x * 8 + 2 * T_
                                for z in range(2):
                                    ch = (ct0 + z) * 8 + G_
                                    b0 = sJ[jl * L + ch]; b1 = sJ[(jl + 1) * L + ch]
                                    d[0, z] = mma_tf32(d[0, z], W['mf'][0, x], b0, b1)
                                    d[1, z] = mma_tf32(d[1, z], W['mf'][1, x], b0, b1)
                        else:
                            for y in range(2):
                                jl = wc * 32 + y * 16 + 2 * T_
                                for z in range(2):
                                    ch = (ct0 + z) * 8 + G_
                                    b0 = np.stack([sJ[jl * L + ch], sJ[(jl + 1) * L + ch]], 1)
                                    b1 = np.stack([sJ[(jl + 8) * L + ch], sJ[(jl + 9) * L + ch]], 1)
                                    d[0, z] = mma_bf16(d[0, z], W['mf'][0, y], b0, b1)
                                    d[1, z] = mma_bf16(d[1, z], W['mf'][1, y], b0, b1)
                        for m in range(2):
                            for z in range(2):
                                row = wr * 32 + m * 16 + G_; col = cc * KC + (ct0 + z) * 8 + 2 * T_
                                dq[row * ldq + col] = d[m, z, :, 0]; dq[row * ldq + col + 1] = d[m, z, :, 1]
                                dq[(row + 8) * ldq + col] = d[m, z, :, 2]; dq[(row + 8) * ldq + col + 1] = d[m, z, :, 3]
            for rr in range(BM):
                i = i0 + rr
                if i >= npix: continue
                fi = f[(base + i) * c:(base + i + 1) * c]; dqi = dq[rr * ldq: rr * ldq + c]
                invq = 1 / max(qnorm[base + i], 1e-12)
                dot = (fi * invq * dqi).sum(); nrm = norms[base + i]
                df[(base + i) * c:(base + i + 1) * c] += (dqi - fi * invq * dot) / nrm
    return df

# ---- v1 (WMMA API level) ----
def v1_forward(Op, qop, B, npix, npad, cpad, h, w, n):
    F_BM, F_BN, LDE = 128, 64, 132
    nb = n * n; cs = 2 * n - 1
    P = np.full(B * npix * nb, np.nan); lsum = np.full(B * npix, np.nan)
    def cls_of(j):
        if j >= npix: return -1
        y, x = divmod(j, w); vf, vl = bins_of(y, h, n); uf, ul = bins_of(x, w, n)
        vc = vf if vf == vl else n + vf; uc = uf if uf == ul else n + uf
        return vc * cs + uc
    for b in range(B):
        qb = b * npad * cpad
        for bx in range((npix + F_BM - 1) // F_BM):
            i0 = bx * F_BM
            bacc = np.zeros(nb * F_BM); l = np.zeros(F_BM)
            for j0 in range(0, npix, F_BN):
                QI = qop[qb + i0 * cpad: qb + (i0 + F_BM) * cpad].reshape(F_BM, cpad)
                QJ = qop[qb + j0 * cpad: qb + (j0 + F_BN) * cpad].reshape(F_BN, cpad)
                S = QI @ QJ.T   # [F_BM, F_BN]
                Et = np.zeros(F_BN * LDE)
                for warp in range(4):
                    for a in range(2):
                        for c4 in range(4):
                            blk = S[warp*32 + a*16: warp*32 + a*16 + 16, c4*16: c4*16 + 16]
                            base = c4 * 16 * LDE + warp * 32 + a * 16
                            for rr in range(16):
                                for cc in range(16):
                                    Et[base + cc * LDE + rr] = blk[rr, cc]  # mem_col_major
                cls = [cls_of(j0 + t) for t in range(F_BN)]
                for t in range(F_BM):
                    cur = cls[0]; run = 0.0
                    def flush(cur, run):
                        vc, uc = divmod(cur, cs)
                        v0 = vc if vc < n else vc - n; v1 = vc if vc < n else vc - n + 1
                        u0 = uc if uc < n else uc - n; u1 = uc if uc < n else uc - n + 1
                        for y in range(v0, v1 + 1):
                            for x in range(u0, u1 + 1): bacc[(y * n + x) * F_BM + t] += run
                    for jj in range(F_BN):
                        k = cls[jj]
                        if k != cur:
                            if cur >= 0: flush(cur, run); l[t] += run
                            run = 0.0; cur = k
                        if k >= 0: run += math.exp(Et[jj * LDE + t] - 1)
                    if cur >= 0: flush(cur, run); l[t] += run
            for t in range(F_BM):
                i = i0 + t
                if i < npix:
                    for binv in range(nb):
                        v, u = divmod(binv, n)
                        P[(b * npix + i) * nb + binv] = bacc[binv * F_BM + t] / (l[t] * bin_size(v, u, h, w, n))
                    lsum[b * npix + i] = l[t]
    return P, lsum

def v1_backward(Op, qop, f, qnorm, norms, lsum, dvec, gt, B, npix, npad, c, cpad, h, w, n):
    B_BM, B_BN, LDS, LDM = 32, 64, 68, 72
    nb = n * n; ldg = nb | 1; ldq = cpad + 4
    df = np.zeros(B * npix * c)
    for b in range(B):
        base = b * npix; qb = b * npad * cpad
        for bx in range((npix + B_BM - 1) // B_BM):
            i0 = bx * B_BM
            dq = np.zeros(B_BM * ldq)
            gtI = np.zeros(B_BM * ldg); lI = np.zeros(B_BM); dI = np.zeros(B_BM); binsI = np.zeros(4 * B_BM, dtype=int)
            for k in range(B_BM * nb):
                r, binv = divmod(k, nb); i = i0 + r
                gtI[r * ldg + binv] = gt[(base + i) * nb + binv] if i < npix else 0
            for t in range(B_BM):
                i = i0 + t
                lI[t] = lsum[base + i] if i < npix else 1; dI[t] = dvec[base + i] if i < npix else 0
                ii = i if i < npix else 0; y, x = divmod(ii, w)
                binsI[4*t:4*t+2] = bins_of(y, h, n); binsI[4*t+2:4*t+4] = bins_of(x, w, n)
            for j0 in range(0, npix, B_BN):
                gtJ = np.zeros(B_BN * ldg); lJ = np.zeros(B_BN); dJ = np.zeros(B_BN); binsJ = np.zeros(4 * B_BN, dtype=int)
                for k in range(B_BN * nb):
                    r, binv = divmod(k, nb); j = j0 + r
                    gtJ[r * ldg + binv] = gt[(base + j) * nb + binv] if j < npix else 0
                for t in range(B_BN):
                    j = j0 + t
                    lJ[t] = lsum[base + j] if j < npix else 1; dJ[t] = dvec[base + j] if j < npix else 0
                    jj_ = j if j < npix else 0; y, x = divmod(jj_, w)
                    binsJ[4*t:4*t+2] = bins_of(y, h, n); binsJ[4*t+2:4*t+4] = bins_of(x, w, n)
                QI = qop[qb + i0 * cpad: qb + (i0 + B_BM) * cpad].reshape(B_BM, cpad)
                QJ = qop[qb + j0 * cpad: qb + (j0 + B_BN) * cpad].reshape(B_BN, cpad)
                St = (QI @ QJ.T)
                Mt = np.zeros((B_BM, B_BN))
                for e in range(B_BM * B_BN):
                    r, jj = divmod(e, B_BN); m = 0.0
                    if i0 + r < npix and j0 + jj < npix:
                        ex = math.exp(St[r, jj] - 1)
                        bj = binsJ[4*jj:4*jj+4]; bi = binsI[4*r:4*r+4]
                        gij = sum(gtI[r*ldg + v*n + u] for v in range(bj[0], bj[1]+1) for u in range(bj[2], bj[3]+1))
                        gji = sum(gtJ[jj*ldg + v*n + u] for v in range(bi[0], bi[1]+1) for u in range(bi[2], bi[3]+1))
                        m = ex * (1 / lI[r]) * (gij - dI[r]) + ex * (1 / lJ[jj]) * (gji - dJ[jj])
                    Mt[r, jj] = m
                D = dq.reshape(B_BM, ldq)
                D[:, :cpad] += Mt @ QJ
            for r in range(B_BM):
                i = i0 + r
                if i >= npix: continue
                fi = f[(base + i) * c:(base + i + 1) * c]; dqi = dq[r * ldq: r * ldq + c]
                invq = 1 / max(qnorm[base + i], 1e-12)
                dot = (fi * invq * dqi).sum()
                df[(base + i) * c:(base + i + 1) * c] += (dqi - fi * invq * dot) / norms[base + i]
    return df

ROUND = len(sys.argv) > 1
def main():
    rng = np.random.default_rng(0)
    for (B, h, w, c, n) in [(2, 13, 11, 37, 4), (1, 19, 19, 60, 8), (1, 16, 16, 40, 5)]:
        npix = h * w; nb = n * n
        npad = (npix + 127) // 128 * 128; cpad = (c + 31) // 32 * 32
        f = rng.uniform(0.02, 1, size=B * npix * c); G = rng.normal(size=B * npix * nb)
        qop, norms, pix = operand(f, B, npix, npad, c, cpad, h, w, n)
        Pd = np.zeros(B * npix * nb); ld = np.zeros(B * npix); dfd = np.zeros(B * npix * c)
        for b in range(B):
            P_, l_, df_ = dense(f[b*npix*c:(b+1)*npix*c].reshape(npix, c), G[b*npix*nb:(b+1)*npix*nb].reshape(npix, nb), h, w, n)
            Pd[b*npix*nb:(b+1)*npix*nb] = P_.reshape(-1); ld[b*npix:(b+1)*npix] = l_; dfd[b*npix*c:(b+1)*npix*c] = df_.reshape(-1)
        def rel(a, b_): return np.linalg.norm(a - b_) / np.linalg.norm(b_)
        P1, l1 = v1_forward(TF32, qop, B, npix, npad, cpad, h, w, n)
        nbt = 2 if nb <= 16 else 4 if nb <= 32 else 8
        # D and gt as relation_backward_rows computes them (from the dense P)
        sizes = np.array([bin_size(v, u, h, w, n) for v in range(n) for u in range(n)], dtype=float)
        dvec = (Pd.reshape(-1, nb) * G.reshape(-1, nb)).sum(1); gt = (G.reshape(-1, nb) / sizes[None, :]).reshape(-1)
        df1 = v1_backward(TF32, qop, f, norms, norms, ld, dvec, gt, B, npix, npad, c, cpad, h, w, n)
        print(f"{h}x{w} c{c} n{n}: v1 fwd P {rel(P1, Pd):.1e} l {rel(l1, ld):.1e} bwd df {rel(df1, dfd):.1e}", flush=True)
        for name, Op in [('tf32', TF32), ('bf16', BF16)]:
            global RND
            if ROUND:
                RND = tf32r if name == 'tf32' else bf16r
                qop, norms, pix = operand(f, B, npix, npad, c, cpad, h, w, n)
            P2, l2 = v2_forward(Op, nbt, qop, pix, B, npix, npad, cpad, h, w, n)
            df2 = v2_backward(Op, qop, pix, f, norms, norms, ld, dvec, gt, B, npix, npad, c, cpad, n)
            print(f"   v2 {name}: P {rel(P2, Pd):.1e} l {rel(l2, ld):.1e} df {rel(df2, dfd):.1e}", flush=True)
main()
