"""Time PyTorch's straightforward relation map (SPEC §4.1), the baseline of `prrnet bench-relation`.

    bench_relation.py --device cuda --batch 64 --h 75 --w 75 --c 450 --n 5 --precision bf16 --backward --json
    bench_relation.py --device cuda --sizes w30 --precision tf32 --json
    bench_relation.py --device cpu --batch 2 --h 13 --w 11 --c 37 --n 4 --precision fp32 --backward

The computation, on f: [B, N, C] (channels-last, N = h·w, pixel i = y·w + x, as prrnet's):
q = f / max(‖f‖, 1e-12); S = bmm(q, qᵀ) [B, N, N] (materialised); R = softmax(S) over rows;
P = adaptive_avg_pool2d(R viewed as [B·N, 1, h, w], n) → [B, N, n, n].
Precision: fp32 (TF32 off), tf32 (torch.backends.cuda.matmul.allow_tf32), bf16 (autocast: bmm in
BF16, softmax in f32). Passes: forward (no_grad), backward (autograd of P with a fixed random
upstream gradient, graph retained, timed alone) and forward_backward. `--chunk K` runs the batch
in pieces of K images (the N×N scores of B = 64 at N = 5625 are 8.1 GB in fp32; the backward
keeps about three such tensors alive).

Timing: CUDA events around each call after `--warmup` untimed ones (perf_counter on the CPU);
median / min / max milliseconds. The JSON fields are those of `prrnet bench-relation`:
flops is the same nominal count (forward 2·N²·C + 2·N² per image, backward 3·2·N²·C + 8·N²);
gemm_tflops is a square torch.matmul (--gemm-side, default 8192 on CUDA) in the same precision
(bf16: true BF16 operands); bytes_model counts what the materialising version moves per image:
forward f read, q written and read, S written (e bytes per entry, e = 2 in BF16 else 4), S read and
R written by softmax (f32), R read by the pooling, P written; backward about twice the N² part;
peak_mem_bytes is torch.cuda.max_memory_allocated (on the CPU the process's peak RSS).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import device_name, set_precision  # noqa: E402


def relation_flops(b: int, n_pix: int, c: int, backward: bool) -> float:
    n2 = float(n_pix) * n_pix
    per_image = 6.0 * n2 * c + 8.0 * n2 if backward else 2.0 * n2 * c + 2.0 * n2
    return b * per_image


def bytes_model(b: int, n_pix: int, c: int, nb: int, precision: str, backward: bool) -> float:
    n2 = float(n_pix) * n_pix
    e = 2.0 if precision == "bf16" else 4.0
    fwd = n_pix * c * 4 * 3 + n2 * e + 2 * n2 * 4 + n2 * 4 + n_pix * nb * 4
    per_image = 2 * (fwd - n_pix * c * 4) + n_pix * c * 4 * 2 if backward else fwd
    return b * per_image




def autocast_for(precision: str, device: str):
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def relation_map(f: torch.Tensor, h: int, w: int, n: int) -> torch.Tensor:
    """f: [B, N, C] → P: [B, N, n, n]."""
    b, n_pix, _ = f.shape
    q = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    s = torch.bmm(q, q.transpose(1, 2))
    r = torch.softmax(s, dim=-1)
    p = F.adaptive_avg_pool2d(r.reshape(b * n_pix, 1, h, w), (n, n))
    return p.reshape(b, n_pix, n, n)


class Timer:
    def __init__(self, device: str):
        self.device = device

    def __call__(self, fn, warmup: int, iters: int) -> list[float]:
        for _ in range(warmup):
            fn()
        if self.device == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(max(iters, 1)):
            if self.device == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return times


def gemm_tflops(device: str, precision: str, side: int, warmup: int = 2, iters: int = 5) -> float | None:
    if side <= 0:
        return None
    g = torch.Generator(device="cpu").manual_seed(1)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = (torch.rand(side, side, generator=g) * 2 - 1).to(device=device, dtype=dtype)
    b = (torch.rand(side, side, generator=g) * 2 - 1).to(device=device, dtype=dtype)
    times = Timer(device)(lambda: torch.matmul(a, b), warmup, iters)
    del a, b
    return 2.0 * side ** 3 / (statistics.median(times) * 1e-3) / 1e12


def parse_sizes(args) -> list[tuple[int, int, int]]:
    if args.sizes is None:
        return [(args.h, args.w, args.c)]
    if args.sizes.lower() == "w30":
        return [(75, 75, 450), (38, 38, 450), (19, 19, 450)]
    out = []
    for item in args.sizes.split(","):
        h, w, c = (int(x) for x in item.strip().split("x"))
        out.append((h, w, c))
    return out


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def held_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.memory_allocated()
    return peak_bytes(device)


def run_size(args, device: str, h: int, w: int, c: int, gemm: float | None, emit) -> None:
    b, n = args.batch, args.n
    n_pix, nb = h * w, n * n
    chunk = args.chunk if args.chunk > 0 else b
    gen = torch.Generator(device="cpu").manual_seed(42)
    # Post-ReLU-like features (non-negative, non-zero) and a normal upstream gradient.
    f = (torch.rand(b, n_pix, c, generator=gen) * 0.98 + 0.02).to(device)
    dp = torch.randn(b, n_pix, n, n, generator=gen).to(device)
    autocast = autocast_for(args.precision, device)
    timer = Timer(device)
    pieces = [(i, min(i + chunk, b)) for i in range(0, b, chunk)]

    def forward():
        with torch.no_grad(), autocast:
            for lo, hi in pieces:
                relation_map(f[lo:hi], h, w, n)

    def forward_backward():
        for lo, hi in pieces:
            x = f[lo:hi].detach().requires_grad_(True)
            with autocast:
                p = relation_map(x, h, w, n)
            torch.autograd.backward(p, dp[lo:hi].to(p.dtype))

    # The backward alone: keep each piece's graph and replay its backward.
    graphs = []

    def build_graphs():
        graphs.clear()
        for lo, hi in pieces:
            x = f[lo:hi].detach().requires_grad_(True)
            with autocast:
                p = relation_map(x, h, w, n)
            graphs.append((x, p, dp[lo:hi].to(p.dtype)))

    def backward():
        for x, p, g in graphs:
            torch.autograd.backward(p, g, retain_graph=True)

    passes = [("forward", forward)]
    if args.backward:
        passes += [("backward", backward), ("forward_backward", forward_backward)]
    for name, fn in passes:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if name == "backward":
            # With --chunk the pieces' graphs are all kept; the backward's memory is theirs.
            build_graphs()
        times = timer(fn, args.warmup, args.iters)
        med = statistics.median(times)
        fwd, bwd = name != "backward", name != "forward"
        flops = (relation_flops(b, n_pix, c, False) if fwd else 0.0) + (
            relation_flops(b, n_pix, c, True) if bwd else 0.0)
        nbytes = (bytes_model(b, n_pix, c, nb, args.precision, False) if fwd else 0.0) + (
            bytes_model(b, n_pix, c, nb, args.precision, True) if bwd else 0.0)
        tflops = flops / (med * 1e-3) / 1e12
        emit({
            "impl": "pytorch-eager",
            "kind": "relation",
            "device": device_name(device),
            "version": "torch",
            "precision": args.precision,
            "pass": name,
            "batch": b,
            "h": h,
            "w": w,
            "c": c,
            "n": n,
            "iters": len(times),
            "ms_median": med,
            "ms_min": min(times),
            "ms_max": max(times),
            "flops": flops,
            "tflops": tflops,
            "gemm_tflops": gemm,
            "pct_of_gemm": (100.0 * tflops / gemm) if gemm else None,
            "bytes_model": nbytes,
            "gbps_model": nbytes / (med * 1e-3) / 1e9,
            "peak_mem_bytes": peak_bytes(device),
            "device_mem_bytes": held_bytes(device),
            "chunk": chunk,
        })
        graphs.clear()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--h", type=int, default=75)
    ap.add_argument("--w", type=int, default=75)
    ap.add_argument("--c", type=int, default=450)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--backward", action="store_true",
                    help="also time the backward alone and forward + backward")
    ap.add_argument("--sizes", default=None, help="w30 or HxWxC,... instead of --h/--w/--c")
    ap.add_argument("--chunk", type=int, default=0, help="images per piece (0: the whole batch)")
    ap.add_argument("--gemm-side", type=int, default=None,
                    help="side of the square matmul measuring the dense rate (0: skip; "
                         "default 8192 on CUDA, 0 on the CPU)")
    ap.add_argument("--version", default="torch", help="accepted for symmetry with prrnet; ignored")
    args = ap.parse_args()

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_relation.py: CUDA is not available", file=sys.stderr)
        return 2
    set_precision(args.precision, device)
    side = args.gemm_side if args.gemm_side is not None else (8192 if device == "cuda" else 0)
    gemm = gemm_tflops(device, args.precision, side)

    def emit(r: dict) -> None:
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            rate = (f" = {r['pct_of_gemm']:.1f}% of matmul {r['precision']} {r['gemm_tflops']:.1f}"
                    if r["gemm_tflops"] else "")
            print(f"torch {r['precision']:4} {r['pass']:16} {r['h']}x{r['w']}x{r['c']} n{r['n']} "
                  f"b{r['batch']}: {r['ms_median']:9.3f} ms median ({r['ms_min']:.3f}-{r['ms_max']:.3f}), "
                  f"{r['tflops']:7.2f} TFLOP/s{rate}, model {r['bytes_model'] / 1e9:.2f} GB "
                  f"({r['gbps_model']:.0f} GB/s), peak {r['peak_mem_bytes'] / 2**20:.0f} MiB",
                  flush=True)

    for h, w, c in parse_sizes(args):
        if h < args.n or w < args.n:
            print(f"bench_relation.py: a {h}x{w} map is smaller than n = {args.n}", file=sys.stderr)
            return 2
        run_size(args, device, h, w, c, gemm, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
