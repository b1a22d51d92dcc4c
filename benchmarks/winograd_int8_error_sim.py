"""Would int8 slice products (as the AMX 1x1 layers use, csrc/cpu/packed_layer_amx.cpp) keep the
CPU backend's Winograd convolutions within their error budget? A float32 emulation, not the kernels:
V = BT d B and U = G g GT rounded to float32 as the kernels round them, then the per-point products
M = U V either in float32 (torch.matmul: the AVX-512 path's accumulation) or from signed 7-bit
slices (each row of U and each column of V scaled by 127 over its largest, the products whose slice
weights sum to at most `maxsum` summed exactly, M rounded once to float32), then Y = AT M A in
float32; each against float64 direct convolution (max |Y - Y64| / max |Y64|). The seed's block 2
(F(4x4, 5x5) over 96 channels) and block 3 (F(m x m, 3x3), m = 2, 3, 4, over 256). NOTES.md v40.

    python benchmarks/winograd_int8_error_sim.py [seed]
"""
import itertools
import sys

import torch

torch.manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
def mats(m, r):
    """AT, G, BT of F(m, r) from the points 0, +-1, +-2, +-1/2 and infinity (csrc/cpu/winograd_matrices.h)."""
    alpha = m + r - 1; pts = [0, 1, -1, 2, -2, 0.5, -0.5][:alpha - 1]; f = alpha - 1
    AT = torch.zeros(m, alpha, dtype=torch.float64); G = torch.zeros(alpha, r, dtype=torch.float64); BT = torch.zeros(alpha, alpha, dtype=torch.float64)
    for j in range(f):
        sc = 1.0
        for l in range(f):
            if l != j: sc *= pts[j] - pts[l]
        for i in range(m): AT[i, j] = pts[j] ** i
        for k in range(r): G[j, k] = pts[j] ** k / sc
    AT[m - 1, f] = 1; G[f, r - 1] = 1
    for j in range(f + 1):
        poly = [1.0]
        for l in range(f):
            if l == j: continue
            poly = [0.0] + poly
            for i in range(len(poly) - 1): poly[i] -= pts[l] * poly[i + 1]
        for k, c in enumerate(poly): BT[j, k] = c
    return AT, G, BT

def slices(t, dim, n):
    """n signed 7-bit slices of t, scaled by 127 over the largest |t| along dim: (slices, 1 / scale)."""
    mx = t.abs().amax(dim=dim, keepdim=True).clamp_min(1e-300)
    r = t * (127.0 / mx)
    out = []
    for _ in range(n):
        s = torch.round(r); out.append(s); r = (r - s) * 128
    return out, mx / 127.0

def run(n, c0, cc, h, r, m, pad, nsl, maxsum):
    """The errors of the float32 and the int8-slice products for one conv (ReLU'd normal inputs)."""
    AT, G, BT = mats(m, r); alpha = m + r - 1
    x = torch.randn(n, c0, h, h).relu().double().float().double()
    w = (torch.randn(cc, c0, r, r) * (2 / (c0 * r * r)) ** .5).float().double()
    y64 = torch.nn.functional.conv2d(x, w, padding=pad)
    oh = h + 2 * pad - r + 1; t = (oh + m - 1) // m
    xp = torch.nn.functional.pad(x, (pad, pad + t * m - oh, pad, pad + t * m - oh))
    d = xp.unfold(2, alpha, m).unfold(3, alpha, m)  # n c0 t t a a
    V = torch.einsum("ij,nctujk,lk->ilnctu", BT.float(), d.float(), BT.float()).double()  # a a n c0 t t (fp32)
    U = torch.einsum("ij,kcjl,ml->imkc", G, w, G).float().double()  # a a cc c0
    Vm = V.permute(0, 1, 3, 2, 4, 5).reshape(alpha, alpha, c0, -1)  # a a c0 tiles
    M32 = torch.matmul(U.float(), Vm.float()).double()
    res = {"fp32": M32}
    Us, su = slices(U, 3, nsl); Vs, sv = slices(Vm, 2, nsl)
    M = torch.zeros_like(M32)
    for i, j in itertools.product(range(nsl), range(nsl)):
        if i + j <= maxsum:
            M += torch.matmul(Us[i], Vs[j]) * 128.0 ** -(i + j)
    res["int8"] = (M * su * sv).float().double()
    out = {}
    for k, Mk in res.items():
        Mk = Mk.reshape(alpha, alpha, cc, n, t, t)
        Y = torch.einsum("ij,jknctu,lk->cntiul", AT.float(), Mk.float(), AT.float()).double().reshape(n, cc, t * m, t * m)[:, :, :oh, :oh]
        out[k] = ((Y - y64).abs().max() / y64.abs().max()).item()
    return out

for name, args in {"b2 F(4,5) 96->256": (2, 96, 256, 26, 5, 4, 2), "b3 F(3,3) 256->384": (2, 256, 384, 12, 3, 3, 1), "b3 F(4,3) 256->384": (2, 256, 384, 12, 3, 4, 1),
                   "b3 F(2,3) 256->384": (1, 256, 384, 12, 3, 2, 1)}.items():
    for nsl, maxsum in ((3, 3), (3, 4), (4, 3), (4, 4)):
        label = f"{nsl} slices, {sum(1 for i in range(nsl) for j in range(nsl) if i + j <= maxsum)} products, {maxsum + 1} groups"
        o = run(*args, nsl, maxsum)
        print(f"{name}: fp32 {o['fp32']:.2e}  int8 {label} {o['int8']:.2e}")
