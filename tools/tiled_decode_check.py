#!/usr/bin/env python3
"""A lane-by-lane emulation of decode_partial_block_tiled (kernels/attention_decode.cu), no GPU needed:
each warp's tiles of T keys, the lanes' partial dot products, the transpose reduction (xor shuffles as
array permutations), the per-head max and sum over the tile's lanes, one online-softmax update a tile,
the probabilities taken from their lanes for the V sums, the one-address tile condition
(MISTRAL_CUDA_DECODE_FAST_TILES), and the warps' merge into the block's partial. It checks the index
mapping the kernel relies on (lane l ends with score l >> SH = t * GP + g) and the partial (max, sum,
acc) against a direct softmax over the same keys, for groups 1 to 8 (padded to 1, 2, 4, 8), head sizes
below and at 128, key ranges shorter and longer than a tile, windows and wrapped caches.
Usage: tools/tiled_decode_check.py   (prints "ok" and the number of cases, or the first failure; exit 77
without NumPy). ctest runs it as TiledDecodeEmulation."""
import sys

try:
    import numpy as np
except ImportError:
    print("skipped: NumPy is not installed")
    sys.exit(77)

WARPS = 4


def xor(a, o):
    """What each lane receives from __shfl_xor_sync(value, o): a[lane ^ o]."""
    return a[np.arange(32) ^ o]


def transpose_reduce(s, nv):
    """s: [32 lanes, NV] partial sums; returns lane l's full sum of score (l >> SH)."""
    lanes = np.arange(32)
    n, o = nv, 16
    s = s.copy()
    while o > 0:
        if n > 1:
            up = (lanes & o) != 0
            lo, hi = s[:, : n // 2], s[:, n // 2 : n]
            send = np.where(up[:, None], lo, hi)
            keep = np.where(up[:, None], hi, lo)
            s = keep + xor(send, o)
            n //= 2
        else:
            s = s + xor(s, o)
        o //= 2
    return s[:, 0]


def block_partial(q, ck, cv, k_own, v_own, kb, ke, G, GP, hd, fast, slots, pos):
    """Partial (m, l, acc) per head g < G of one block: keys [kb, ke) of one KV head, key j < pos in cache
    row j % slots of ck, cv [slots, 128], key pos in k_own, v_own (rows of 128, zero past hd); q: [GP, 128]
    scaled, zero past hd and for g >= G."""
    T = 32 // GP if GP >= 4 else 8
    NV = T * GP
    SH = {32: 0, 16: 1, 8: 2}[NV]
    LG = {1: 0, 2: 1, 4: 2, 8: 3}[GP]
    lanes = np.arange(32)
    idx = lanes >> SH
    my_t, my_g = idx >> LG, idx & (GP - 1)
    warp_m, warp_l, warp_acc = [], [], []
    fast_tiles = 0
    for w in range(WARPS):
        m = np.full(32, -np.inf)
        l = np.zeros(32)
        acc = np.zeros((GP, 128))  # [g, dim]: lane l holds dims 4l .. 4l+3
        base = kb + T * w
        while base < ke:
            slot = base % slots
            if fast and base + T <= ke and base + T <= pos and slot + T <= slots:
                fast_tiles += 1  # rows slot .. slot + T - 1 from one address
                kx, vx = ck[slot : slot + T].copy(), cv[slot : slot + T].copy()
            else:  # key by key: zeros past ke, the own row at pos, the cache row (wrapping) before
                kx, vx = np.zeros((T, 128)), np.zeros((T, 128))
                for t in range(T):
                    j = base + t
                    if j < ke:
                        kx[t], vx[t] = (ck[slot], cv[slot]) if j < pos else (k_own, v_own)
                    slot = 0 if slot + 1 == slots else slot + 1
            s = np.zeros((32, NV))
            for L in range(32):
                d = slice(4 * L, 4 * L + 4)
                for t in range(T):
                    for g in range(GP):
                        s[L, t * GP + g] = q[g, d] @ kx[t, d]
            sc = transpose_reduce(s, NV)
            sc = np.where(base + my_t < ke, sc, -np.inf)
            mt = sc.copy()
            o = 1 << (SH + LG)
            while o < 32:
                mt = np.maximum(mt, xor(mt, o))
                o <<= 1
            nm = np.maximum(m, mt)
            assert np.all(np.isfinite(nm)), "a tile whose first key is in range has a finite max"
            p = np.exp(sc - nm)
            corr = np.exp(m - nm)
            ps = p.copy()
            o = 1 << (SH + LG)
            while o < 32:
                ps = ps + xor(ps, o)
                o <<= 1
            l = l * corr + ps
            m = nm
            for g in range(GP):
                acc[g] *= corr[g << SH]
            for t in range(T):
                for g in range(GP):
                    acc[g] += p[(t * GP + g) << SH] * vx[t]
            base += T * WARPS
        # What the warp's lanes write to shared memory: (m, l) from lane g << SH, acc rows per head.
        warp_m.append(np.array([m[g << SH] for g in range(G)]))
        warp_l.append(np.array([l[g << SH] for g in range(G)]))
        warp_acc.append(acc[:G, :hd])
    # write_block_partial
    M = np.max(np.array(warp_m), axis=0)
    out = []
    for g in range(G):
        c = [0.0 if warp_m[w][g] == -np.inf else np.exp(warp_m[w][g] - M[g]) for w in range(WARPS)]
        L = sum(warp_l[w][g] * c[w] for w in range(WARPS))
        A = sum(warp_acc[w][g] * c[w] for w in range(WARPS))
        out.append((M[g], L, A))
    return out, fast_tiles


def main():
    rng = np.random.default_rng(7)
    cases = fast_total = 0
    for G in (1, 2, 3, 4, 5, 6, 8):
        GP = 1 if G <= 1 else 2 if G <= 2 else 4 if G <= 4 else 8
        for hd in (12, 64, 128):
            for pos, slots, kb, ke in ((0, 16, 0, 1), (5, 16, 0, 6), (40, 64, 3, 41), (130, 50, 81, 131),
                                       (300, 320, 100, 197), (77, 32, 46, 78)):
                q = np.zeros((GP, 128))
                q[:G, :hd] = rng.normal(size=(G, hd)) / np.sqrt(hd)
                K = np.zeros((ke, 128))  # key j's rows, by position
                V = np.zeros((ke, 128))
                K[:, :hd] = rng.normal(size=(ke, hd))
                V[:, :hd] = rng.normal(size=(ke, hd))
                ck, cv = np.full((slots, 128), np.nan), np.full((slots, 128), np.nan)  # unwritten rows: NaN
                for j in range(max(0, pos - slots + 1), min(pos, ke)):
                    ck[j % slots], cv[j % slots] = K[j], V[j]
                own_k = K[pos] if pos < ke else np.full(128, np.nan)
                own_v = V[pos] if pos < ke else np.full(128, np.nan)
                parts, fast = block_partial(q, ck, cv, own_k, own_v, kb, ke, G, GP, hd, True, slots, pos)
                fast_total += fast
                for g in range(G):
                    M, L, A = parts[g]
                    sc = K[kb:ke, :hd] @ q[g, :hd]
                    want_m = sc.max()
                    w = np.exp(sc - want_m)
                    assert abs(M - want_m) < 1e-12, (G, hd, pos, g, "max")
                    assert abs(L - w.sum()) < 1e-9 * w.sum(), (G, hd, pos, g, "sum")
                    assert np.allclose(A, w @ V[kb:ke, :hd], rtol=1e-9, atol=1e-12), (G, hd, pos, g, "acc")
                cases += 1
    assert fast_total > 0, "no tile took the one-address path"
    print(f"ok: {cases} cases, {fast_total} one-address tiles")


if __name__ == "__main__":
    main()
