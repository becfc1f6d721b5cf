"""Time the PyTorch reference PRRNet (the baseline the Rust backends are measured against).

    bench.py --device cuda --preset w30 --size 299 --batch 64 --precision bf16 --mode train --json
    bench.py --device cuda --all            # eager/compile x fp32/tf32/bf16 x infer/train

infer = eval-mode forward under torch.no_grad(); train = forward + loss + backward + Adam step
(lr 2e-4). Each iteration is timed on its own (CUDA events on the GPU, perf_counter on the CPU)
after the warm-up iterations; the report gives median / min / max milliseconds per iteration.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prrnet_ref as R  # noqa: E402


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


def set_precision(precision: str, device: str) -> None:
    tf32 = precision == "tf32"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def make_batch(batch: int, size: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=g)
    image = image + 0.05 * torch.sign(image)
    label = torch.tensor([float(b % 2) for b in range(batch)])
    mask = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        if label[b] > 0:
            y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
            mask[b, :, y0:y0 + h, x0:x0 + w] = 1.0
    mask_weight = torch.ones(batch)
    return [t.to(device) for t in (image, mask, label, mask_weight)]


def run_one(device: str, preset: str, size: int, batch: int, precision: str, mode: str,
            compile_: bool, iters: int, warmup: int, n: int = 5, groups: int = 1) -> dict:
    set_precision(precision, device)
    torch.manual_seed(0)
    model = R.build(preset, n, groups).to(device)
    image, mask, label, mask_weight = make_batch(batch, size, device)
    fwd = torch.compile(model) if compile_ else model
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    if mode == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                out = fwd(image, mask, label, mask_weight)
            out["loss"].backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                fwd(image)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()

    times = []
    for _ in range(iters):
        if device == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)

    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    med = statistics.median(times)
    return {
        "impl": "pytorch-compile" if compile_ else "pytorch-eager",
        "device": device_name(device),
        "preset": preset,
        "size": size,
        "batch": batch,
        "precision": precision,
        "mode": mode,
        "iters": iters,
        "ms_median": med,
        "ms_min": min(times),
        "ms_max": max(times),
        "images_per_s": batch / (med / 1e3),
        "peak_mem_bytes": int(peak),
        "torch": torch.__version__,
    }


def report(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res), flush=True)
    elif "error" in res:
        print(f"{res['impl']:16s} {res['precision']:5s} {res['mode']:6s} FAILED: {res['error']}", flush=True)
    else:
        print(f"{res['impl']:16s} {res['device']} {res['preset']} S={res['size']} B={res['batch']} "
              f"{res['precision']:5s} {res['mode']:6s} median {res['ms_median']:.2f} ms "
              f"(min {res['ms_min']:.2f}, max {res['ms_max']:.2f}) {res['images_per_s']:.2f} img/s "
              f"peak {res['peak_mem_bytes'] / 2**20:.0f} MiB", flush=True)


def cleanup(device: str) -> None:
    gc.collect()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=sorted(R.PRESETS), default="w30")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    ap.add_argument("--mode", choices=["infer", "train"], default="infer")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per line")
    ap.add_argument("--all", action="store_true",
                    help="eager/compile x fp32/tf32/bf16 x infer/train (W30, 299, batch 64 by default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    size = args.size or R.PRESETS[args.preset]["size"]

    if not args.all:
        batch = args.batch or 4
        res = run_one(args.device, args.preset, size, batch, args.precision, args.mode,
                      args.compile, args.iters, args.warmup, args.n, args.groups)
        report(res, args.json)
        return 0

    batch = args.batch or 64
    failures = 0
    for compile_ in (False, True):
        for precision in ("fp32", "tf32", "bf16"):
            for mode in ("infer", "train"):
                try:
                    res = run_one(args.device, args.preset, size, batch, precision, mode, compile_,
                                  args.iters, args.warmup, args.n, args.groups)
                except Exception as e:  # report and carry on (OOM, compile failures, ...)
                    failures += 1
                    res = {"impl": "pytorch-compile" if compile_ else "pytorch-eager",
                           "device": device_name(args.device), "preset": args.preset, "size": size,
                           "batch": batch, "precision": precision, "mode": mode,
                           "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                    traceback.print_exc(file=sys.stderr)
                report(res, args.json)
                cleanup(args.device)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
