"""Time the PyTorch reference PRRNet (the baseline the Rust backends are measured against).

    bench.py --device cuda --preset w30 --size 299 --batch 64 --precision bf16 --mode train --json
    bench.py --device cuda --all            # eager/compile x fp32/tf32/bf16 x infer/train
    bench.py --device cuda --configs eager:fp32:infer,eager:bf16:train --deadline-s 120 --json
    bench.py --device cuda --preset w30 --batch 64 --mode train --breakdown --json

infer = eval-mode forward under torch.no_grad(); train = forward + loss + backward + Adam step
(lr 2e-4). Each iteration is timed on its own (CUDA events on the GPU, perf_counter on the CPU)
after the warm-up iterations; the report gives median / min / max milliseconds per iteration.

--breakdown (eager) then times the same iterations stage by stage, with the stage names of
`prrnet bench --breakdown` (fwd.backbone, fwd.aggregation, fwd.relation, fwd.pr_heads, fwd.rr,
fwd.losses, bwd.losses, ..., bwd.backbone, optimizer): the forward is cut at the stage
boundaries (each stage's inputs are detached leaves), and the backward runs stage by stage
from the loss down with torch.autograd.backward, each stage between two CUDA events recorded
on the stream (no synchronisation in between). `other` is the step's time outside every stage.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prrnet_ref as R  # noqa: E402
from bench_common import device_name, set_precision  # noqa: E402




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


class StageTimer:
    """Marks around stages: CUDA events on the current stream (read once, after the step) on
    the GPU, perf_counter on the CPU (whose operations are synchronous)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.marks = []

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        a = self.mark()
        yield
        self.marks.append((name, a, self.mark()))

    def elapsed(self, a, b) -> float:
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b)
        return (b - a) * 1e3

    def take(self):
        out = [(name, self.elapsed(a, b)) for name, a, b in self.marks]
        self.marks = []
        return out


def _leaf(t: torch.Tensor, train: bool) -> torch.Tensor:
    return t.detach().requires_grad_() if train else t


def staged_step(model, opt, image, mask, label, mask_weight, train: bool, autocast,
                st: StageTimer) -> None:
    """One inference pass or training step of prrnet_ref.PRRNet, cut into prrnet's stages
    (the same computation as PRRNet.forward + backward + Adam)."""
    cfg = model.cfg
    n = cfg.n
    grad = contextlib.nullcontext() if train else torch.no_grad()
    if train:
        opt.zero_grad(set_to_none=True)
    with grad:
        with st.stage("fwd.backbone"), autocast:
            xs = model.backbone(image)
        xs_in = [_leaf(x, train) for x in xs]
        with st.stage("fwd.aggregation"), autocast:
            h, w = xs_in[0].shape[-2:]
            ups = [xs_in[0]] + [F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
                                for x in xs_in[1:]]
            f_in = torch.cat(ups, dim=1)
        f_in_l = _leaf(f_in, train)
        with st.stage("fwd.relation"), autocast:
            p = R.relation_map(f_in_l, n)
        p_l = _leaf(p, train)
        with st.stage("fwd.pr_heads"), autocast:
            bsz = f_in_l.shape[0]
            rel = model.pr.rel(p_l.reshape(bsz * h * w, 1, n, n))
            f_rel = rel.reshape(bsz, h, w, 64).permute(0, 3, 1, 2)
            f_vis = model.pr.proj(f_in_l)
            f_upd = torch.cat([f_vis, f_rel], dim=1)
            mask_logit = model.pr.mask(f_upd)
            m = torch.sigmoid(mask_logit)
            flat = f_upd.flatten(2)
            mf = m.flatten(2)
            f_man = (flat * mf).sum(-1) / (mf.sum(-1) + 1e-6)
            f_ori = (flat * (1.0 - mf)).sum(-1) / ((1.0 - mf).sum(-1) + 1e-6)
            regions = torch.cat([f_man, f_ori], dim=0)
        regions_l = _leaf(regions, train)
        mask_logit_l = _leaf(mask_logit, train)
        with st.stage("fwd.rr"), autocast:
            emb = model.rr.fm(regions_l)
            z = R.region_metrics(emb[:bsz], emb[bsz:], cfg.groups)
            logit = model.rr.cls(z)
            torch.sigmoid(logit)
        if not train:
            return
        logit_l = _leaf(logit, train)
        with st.stage("fwd.losses"), autocast:
            loss = model.losses(mask_logit_l, logit_l, mask, label, mask_weight)["loss"]
    with st.stage("bwd.losses"):
        loss.backward()
    with st.stage("bwd.rr"):
        torch.autograd.backward([logit], [logit_l.grad])
    with st.stage("bwd.pr_heads"):
        torch.autograd.backward([mask_logit, regions], [mask_logit_l.grad, regions_l.grad])
    with st.stage("bwd.relation"):
        torch.autograd.backward([p], [p_l.grad])
    with st.stage("bwd.aggregation"):
        torch.autograd.backward([f_in], [f_in_l.grad])
    with st.stage("bwd.backbone"):
        torch.autograd.backward(xs, [x.grad for x in xs_in])
    with st.stage("optimizer"):
        opt.step()


def run_one(device: str, preset: str, size: int, batch: int, precision: str, mode: str,
            compile_: bool, iters: int, warmup: int, n: int = 5, groups: int = 1,
            breakdown: bool = False) -> dict:
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
    extra = {}
    if breakdown:
        # Eager stages, after the timed iterations (their markers do not disturb them).
        st = StageTimer(device)
        per_stage, step_ms = {}, []
        opt_b = opt if mode == "train" else None
        for _ in range(iters):
            a = st.mark()
            staged_step(model, opt_b, image, mask, label, mask_weight, mode == "train",
                        autocast, st)
            b = st.mark()
            times_s = st.take()
            total = st.elapsed(a, b)
            step_ms.append(total)
            for name, t in times_s:
                per_stage.setdefault(name, []).append(t)
            per_stage.setdefault("other", []).append(total - sum(t for _, t in times_s))
        stages = [(k, statistics.median(v)) for k, v in per_stage.items() if k != "other"]
        extra = {
            "stages": stages,
            "breakdown": [{"stage": k, "ms": t} for k, t in stages]
            + [{"stage": "other", "ms": max(0.0, statistics.median(per_stage["other"]))}],
            "breakdown_step_ms": statistics.median(step_ms),
            "breakdown_impl": "pytorch-eager",
        }
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
        "timer": "cuda-events" if device == "cuda" else "host-clock",
        "torch": torch.__version__,
        **extra,
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
    ap.add_argument("--breakdown", action="store_true",
                    help="also time every stage (eager, prrnet's stage names; see above)")
    ap.add_argument("--all", action="store_true",
                    help="eager/compile x fp32/tf32/bf16 x infer/train (W30, 299, batch 64 by default)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated IMPL:PRECISION:MODE list run in this order in one process, "
                         "IMPL = eager|compile (e.g. eager:fp32:infer,compile:bf16:train); "
                         "batch 64 by default")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="with --all/--configs: start no configuration after this many seconds "
                         "(each one still runs to its end; the rest print as skipped)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    size = args.size or R.PRESETS[args.preset]["size"]

    if not args.all and not args.configs:
        batch = args.batch or 4
        res = run_one(args.device, args.preset, size, batch, args.precision, args.mode,
                      args.compile, args.iters, args.warmup, args.n, args.groups,
                      breakdown=args.breakdown)
        report(res, args.json)
        return 0

    batch = args.batch or 64
    if args.configs:
        configs = []
        for item in args.configs.split(","):
            parts = item.strip().split(":")
            if (len(parts) != 3 or parts[0] not in ("eager", "compile")
                    or parts[1] not in ("fp32", "tf32", "bf16") or parts[2] not in ("infer", "train")):
                ap.error(f"bad --configs entry {item!r}: expected eager|compile:fp32|tf32|bf16:infer|train")
            configs.append((parts[0] == "compile", parts[1], parts[2]))
    else:
        configs = [(c, p, m) for c in (False, True) for p in ("fp32", "tf32", "bf16")
                   for m in ("infer", "train")]
    t_start = time.perf_counter()
    failures = 0
    for compile_, precision, mode in configs:
        impl = "pytorch-compile" if compile_ else "pytorch-eager"
        base = {"impl": impl, "device": device_name(args.device), "preset": args.preset,
                "size": size, "batch": batch, "precision": precision, "mode": mode}
        if args.deadline_s is not None and time.perf_counter() - t_start > args.deadline_s:
            res = dict(base, skipped=f"deadline of {args.deadline_s:.0f} s reached")
            if args.json:
                print(json.dumps(res), flush=True)
            else:
                print(f"{impl:16s} {precision:5s} {mode:6s} skipped (deadline)", flush=True)
            continue
        try:
            res = run_one(args.device, args.preset, size, batch, precision, mode, compile_,
                          args.iters, args.warmup, args.n, args.groups,
                          breakdown=args.breakdown and not compile_)
        except Exception as e:  # report and carry on (OOM, compile failures, ...)
            failures += 1
            res = dict(base, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            traceback.print_exc(file=sys.stderr)
        report(res, args.json)
        cleanup(args.device)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
