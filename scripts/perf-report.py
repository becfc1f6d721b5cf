#!/usr/bin/env python3
"""Turn a GPU-bundle log folder into the markdown tables of docs/PERFORMANCE.md.

    python3 scripts/perf-report.py LOGDIR [--out FILE] [--window-iters 3]

Reads every `*.log`, `*.jsonl`, `*.json`, `*.csv` and `*.txt` file in LOGDIR (the bundle's
`run.sh` writes one log per step) and uses what it recognises:

- JSON lines of `prrnet bench --json` and `reference/bench.py --json` (fields `impl`, `preset`,
  `size`, `batch`, `precision`, `mode`, `ms_median`, `images_per_s`, `peak_mem_bytes`, and
  with `--breakdown` a `breakdown` list of `{stage, ms[, gflop, matmul_gflop, gbytes]}`);
- the JSON line of `prrnet bench --peaks --json` (`kind: "peaks"`: `fp32_tflops`,
  `tf32_tflops`, `bf16_tflops`, `dram_gbps`);
- JSON lines of the relation benchmarks (`prrnet bench-relation --json`,
  `reference/bench_relation.py --json`): any record whose file name or `kind`/`impl`/`bench`
  mentions "relation", shown as they are;
- `nsys stats --report cuda_gpu_kern_sum` output, CSV (`--format csv`) or the default text
  table, for the top-ten kernel table (times divided by `--window-iters`, the iterations the
  capture window held);
- `meta.log` (written by run.sh: date, host, GPU) and the first line of each step log (`$ cmd`).

Nothing is estimated: an entry without a measurement prints as "—". Only the standard
library is used (the GPU host has python3, maybe nothing else).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import glob
import io
import json
import os
import re
import sys

DASH = "—"
PRECISIONS = ("fp32", "tf32", "bf16")
MODES = ("infer", "train")
IMPLS = ("prrnet", "pytorch-eager", "pytorch-compile")
STAGE_ORDER = ("fwd.backbone", "fwd.aggregation", "fwd.relation", "fwd.pr_heads", "fwd.rr",
               "fwd.losses", "bwd.losses", "bwd.rr", "bwd.pr_heads", "bwd.relation",
               "bwd.aggregation", "bwd.backbone", "optimizer", "other")


def fmt(v, spec=".1f", suffix=""):
    if v is None:
        return DASH
    try:
        if v != v:  # NaN
            return DASH
        return format(v, spec) + suffix
    except (TypeError, ValueError):
        return str(v)


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


# ---- reading the folder --------------------------------------------------------------------

def read_files(logdir):
    files = []
    for pat in ("*.log", "*.jsonl", "*.json", "*.csv", "*.csv.gz", "*.txt"):
        files.extend(glob.glob(os.path.join(logdir, pat)))
    return sorted(set(files))


def json_records(path):
    """The JSON lines of a log; each gets `_file`, and `_conv_override` when the log's command
    set PRRNET_CONV_ALGO (a run of a non-default convolution algorithm)."""
    out = []
    override = env_setting(first_command(path), "PRRNET_CONV_ALGO")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    rec["_file"] = os.path.basename(path)
                    if override:
                        rec["_conv_override"] = override
                    out.append(rec)
    except OSError:
        pass
    return out


def env_setting(cmd, name):
    """The value `cmd` (a logged command line) gives the environment variable `name`, or None."""
    return next((w.split("=", 1)[1] for w in (cmd or "").split() if w.startswith(name + "=")),
                None)


def first_command(path):
    try:
        with open(path, errors="replace") as f:
            line = f.readline().rstrip("\n")
    except OSError:
        return None
    return line[2:] if line.startswith("$ ") else None


def failed_bench_runs(path):
    """Records for a step log that ran `prrnet bench` (not --peaks) and printed no JSON: the
    configuration read from its command line, with the reason (TIMEOUT, or the error line)."""
    cmd = first_command(path)
    if not cmd or " bench " not in f" {cmd} " or "--peaks" in cmd or "bench.py" in cmd:
        return []
    if json_records(path):
        return []
    words = cmd.split()

    def arg(flag, default=None):
        return words[words.index(flag) + 1] if flag in words[:-1] else default

    try:
        with open(path, errors="replace") as f:
            tail = [l.strip() for l in f.read().splitlines()[1:] if l.strip()]
    except OSError:
        tail = []
    reason = next((l for l in reversed(tail) if l.startswith("TIMEOUT") or l.startswith("skipped")),
                  None) or next((l for l in tail if l.startswith("error")), None) or "no result"
    rec = {"impl": "prrnet", "preset": arg("--preset", "w30"), "size": _int(arg("--size")),
           "batch": _int(arg("--batch", "4")), "precision": arg("--precision", "fp32"),
           "mode": "train" if "--train" in words else "infer", "error": reason,
           "_file": os.path.basename(path)}
    algo = env_setting(cmd, "PRRNET_CONV_ALGO")
    if algo:
        rec["conv_algo"] = rec["_conv_override"] = algo
    return [rec]


def conv_override(r):
    """The algorithm of a prrnet run whose command set PRRNET_CONV_ALGO (im2col, implicit, …),
    else None (a run of the default algorithm, whatever `conv_algo` it reports)."""
    return r.get("_conv_override") if r.get("impl") == "prrnet" else None


def relation_override(r):
    """The version of a prrnet run under PRRNET_RELATION_VERSION (gpu-run.sh names its log
    relation_<version>_prrnet_bench_...), else None."""
    m = re.match(r"relation_([a-z0-9]+)_prrnet_bench_", r.get("_file", ""))
    return m.group(1) if m and r.get("impl") == "prrnet" else None


def conv_algo_table(bench, overrides):
    """prrnet with the default convolution algorithm against the same configuration under
    PRRNET_CONV_ALGO=<algo>, from the same run."""
    if not overrides:
        return "No `PRRNET_CONV_ALGO` runs in this folder."
    return variant_table(bench, overrides, "default ms", "override ms", "override / default",
                         name=("PRRNET_CONV_ALGO", conv_override))


def conv_bench_tables(recs):
    """`prrnet bench-conv` records: the per-step totals per algorithm, then every shape's
    forward (and backward) time per algorithm side by side."""
    conv = [r for r in recs if r.get("kind") == "conv"]
    totals = [r for r in recs if r.get("kind") == "conv_total"]
    if not conv and not totals:
        return "No `prrnet bench-conv` records in this folder."
    out = []
    algos = []
    for r in conv + totals:
        if r.get("algo") not in algos:
            algos.append(r.get("algo"))
    # Records before the `mode` field came from training steps (`--backward`).
    def mode(r):
        return r.get("mode", "train")

    keys = []
    for r in totals:
        k = (mode(r), r.get("precision"), r.get("pass"))
        if k not in keys:
            keys.append(k)
    rows = []
    for key in keys:
        by = {r.get("algo"): r for r in totals
              if (mode(r), r.get("precision"), r.get("pass")) == key}
        calls = next(iter(by.values())).get("calls")
        rows.append(list(key) + [calls] + [fmt(by[a].get("ms_median"), ".2f") if a in by else DASH
                                           for a in algos])
    out.append("Per step (Σ calls × median; the halo algorithm counts the implicit time for the "
               "shapes it leaves to the implicit kernels):")
    out.append("")
    out.append(md_table(["mode", "precision", "pass", "calls"] + [f"{a} ms" for a in algos],
                        rows))
    out.append("")
    rows = []
    shapes = []
    for r in conv:
        k = (mode(r), r.get("precision"), r.get("pass"), r.get("shape"))
        if k not in shapes:
            shapes.append(k)
    for key in shapes:
        by = {r.get("algo"): r for r in conv
              if (mode(r), r.get("precision"), r.get("pass"), r.get("shape")) == key}
        best = min(by, key=lambda a: by[a].get("ms_median") or float("inf"))
        calls = next(iter(by.values())).get("calls")
        rows.append(list(key[:3]) + [f"`{key[3]}`", calls] +
                    [fmt(by[a].get("ms_median"), ".3f") if a in by else DASH for a in algos] +
                    [best])
    out.append(md_table(["mode", "precision", "pass", "shape", "calls"] +
                        [f"{a} ms" for a in algos] + ["fastest"], rows))
    return "\n".join(out)


def relation_version_table(bench, older):
    """prrnet with the dispatched relation version against the same configuration under
    PRRNET_RELATION_VERSION=<version> (v2 for BF16, simt for fp32)."""
    if not older:
        return "No `PRRNET_RELATION_VERSION` runs in this folder."
    return variant_table(bench, older, "default ms", "override ms", "override / default",
                         name=("override", relation_override))


def variant_table(bench, variants, default_col, variant_col, ratio_col, name=None):
    """Each variant run beside the default run of the same configuration; `name` = (column,
    function of the record) adds a column naming the variant."""
    rows = []
    for r in variants:
        key = (r.get("preset"), r.get("size"), r.get("batch"), r.get("precision"), r.get("mode"))
        d = latest([x for x in bench if x.get("impl") == "prrnet" and "error" not in x and
                    (x.get("preset"), x.get("size"), x.get("batch"), x.get("precision"),
                     x.get("mode")) == key])
        ms_i = d.get("ms_median") if d else None
        ms_c = r.get("ms_median")
        ratio = fmt(ms_c / ms_i, ".2f", "×") if ms_i and ms_c else DASH
        rows.append([key[0], key[1], key[2], key[3], key[4]] +
                    ([name[1](r) or DASH] if name else []) +
                    [fmt(ms_i, ".2f") if ms_i else DASH,
                     fmt(ms_c, ".2f") if ms_c else (r.get("error") or DASH), ratio])
    return md_table(["preset", "size", "batch", "precision", "mode"] +
                    ([name[0]] if name else []) + [default_col, variant_col, ratio_col], rows)


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def parse_meta(logdir):
    meta = {}
    path = os.path.join(logdir, "meta.log")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    meta.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return meta


def _num(s):
    s = s.strip().replace(",", "")
    try:
        return float(s)
    except ValueError:
        return None


def _kern_row(r):
    """One kernel-summary row from a dict of column -> text, or None."""
    def col(*prefixes):
        for k, v in r.items():
            if any(k.startswith(p) for p in prefixes):
                return _num(v)
        return None
    name = (r.get("Name") or "").strip()
    total = col("Total Time")
    if not name or total is None:
        return None
    return {"name": name, "total_ns": total, "instances": col("Instances", "Num Calls", "Count"),
            "avg_ns": col("Avg"), "pct": col("Time (%)", "Time(%)")}


def parse_kern_sum(path):
    """Rows {name, total_ns, instances, avg_ns, pct} of a cuda_gpu_kern_sum report (CSV from
    `--format csv`, or the default text table), or [] when the file holds none. In a file with
    several reports, only the block announced as cuda_gpu_kern_sum (nsys prints "Processing
    [...] with [.../cuda_gpu_kern_sum.py]") counts; an unannounced block counts when its
    columns are those of a kernel summary (a `Name` column, no `Range`)."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    base = os.path.basename(path)
    label = "cuda_gpu_kern_sum" if "kern_sum" in base else None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.search(r"with \[[^\]]*?([A-Za-z0-9_]+)\.py\]", line)
        if m:
            label = m.group(1)
            i += 1
            continue
        is_header = "Total Time" in line and "Name" in line and "Range" not in line
        if is_header and label in (None, "cuda_gpu_kern_sum"):
            block = []
            for l2 in lines[i:]:
                if not l2.strip():
                    break
                block.append(l2)
            rows = []
            if "," in line:
                for r in csv.DictReader(io.StringIO("\n".join(block))):
                    row = _kern_row({(k or "").strip(): (v or "") for k, v in r.items()})
                    if row:
                        rows.append(row)
            else:
                header = re.split(r"\s{2,}", line.strip())
                body = block[1:]
                if body and set(body[0].strip()) <= {"-", " "}:
                    body = body[1:]
                for l2 in body:
                    cells = re.split(r"\s{2,}", l2.strip(), maxsplit=len(header) - 1)
                    if len(cells) == len(header):
                        row = _kern_row(dict(zip(header, cells)))
                        if row:
                            rows.append(row)
            if rows:
                return rows
            i += len(block)
            continue
        i += 1
    return []


NCU_UNITS_NS = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6,
                "second": 1e9, "s": 1e9}


def parse_ncu_csv(path):
    """Kernel-summary rows from `ncu --csv --metrics gpu__time_duration.sum` output (one row per
    profiled launch), summed per kernel name into the rows parse_kern_sum returns. The run
    script uses this when nsys is absent."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"') and "Kernel Name" in l),
                 None)
    if start is None:
        return []
    per = {}
    for r in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        if (r.get("Metric Name") or "") != "gpu__time_duration.sum":
            continue
        v = _num(r.get("Metric Value") or "")
        scale = NCU_UNITS_NS.get((r.get("Metric Unit") or "").strip())
        if v is None or scale is None:
            continue
        name = (r.get("Kernel Name") or "?").strip()
        acc = per.setdefault(name, [0.0, 0])
        acc[0] += v * scale
        acc[1] += 1
    total = sum(t for t, _ in per.values())
    return [{"name": n, "total_ns": t, "instances": c, "avg_ns": t / c,
             "pct": 100.0 * t / total if total else None} for n, (t, c) in per.items()]


# ---- tables --------------------------------------------------------------------------------

def latest(recs):
    """The last record per key (later files and lines win)."""
    return recs[-1] if recs else None


def bench_key(r):
    return (r.get("preset"), r.get("size"), r.get("batch"))


def side_by_side(bench):
    out = []
    groups = sorted({bench_key(r) for r in bench}, key=lambda k: tuple(str(x) for x in k))
    for g in groups:
        preset, size, batch = g
        recs = [r for r in bench if bench_key(r) == g]
        devices = sorted({r.get("device", "?") for r in recs if "ms_median" in r})
        out.append(f"**{preset} {size}×{size}, batch {batch}** — devices: "
                   + ("; ".join(devices) if devices else DASH))
        out.append("")
        header = ["mode", "precision"]
        for impl in IMPLS:
            header += [f"{impl} ms", f"{impl} img/s", f"{impl} peak GiB"]
        header += ["prrnet vs eager", "prrnet vs compile"]
        rows = []
        for mode in MODES:
            for prec in PRECISIONS:
                row = [mode, prec]
                ms = {}
                for impl in IMPLS:
                    r = latest([x for x in recs if x.get("impl") == impl and x.get("mode") == mode
                                and x.get("precision") == prec])
                    if r is None:
                        row += [DASH] * 3
                    elif "ms_median" not in r:
                        err = str(r.get("error", ""))
                        why = ("timeout" if err.startswith("TIMEOUT") else "skipped"
                               if ("skipped" in r or err.startswith("skipped")) else "failed")
                        row += [why, DASH, DASH]
                    else:
                        ms[impl] = r["ms_median"]
                        row += [fmt(r["ms_median"], ".1f"), fmt(r.get("images_per_s"), ".1f"),
                                fmt((r.get("peak_mem_bytes") or 0) / 2**30 if r.get("peak_mem_bytes") else None, ".2f")]
                for other in ("pytorch-eager", "pytorch-compile"):
                    if "prrnet" in ms and other in ms and ms["prrnet"] > 0:
                        row.append(fmt(ms[other] / ms["prrnet"], ".2f", "×"))
                    else:
                        row.append(DASH)
                rows.append(row)
        out.append(md_table(header, rows))
        out.append("")
        out.append("failed / timeout / skipped: the run printed no result (its log says why). "
                   "Speed-up = PyTorch ms / prrnet ms (above 1: prrnet is faster). "
                   "Peak memory: prrnet's device allocations (buffers + workspace), PyTorch's "
                   "`max_memory_allocated`; on the CPU both are the process's peak RSS.")
        out.append("")
    return "\n".join(out)


def floors(bench, peaks):
    out = []
    if peaks:
        out.append(f"Measured peaks ({peaks.get('device', '?')}, `prrnet bench --peaks`): "
                   f"fp32 {fmt(peaks.get('fp32_tflops'))} TFLOP/s, "
                   f"tf32 {fmt(peaks.get('tf32_tflops'))} TFLOP/s, "
                   f"bf16 {fmt(peaks.get('bf16_tflops'))} TFLOP/s, "
                   f"memory {fmt(peaks.get('dram_gbps'), '.0f')} GB/s (copy, read + write).")
    else:
        out.append("Measured peaks: none in this folder (`prrnet bench --peaks` runs on a GPU "
                   "only), so the floors print as " + DASH + ".")
    out.append("")
    pr = [r for r in bench if r.get("impl") == "prrnet" and r.get("breakdown")]
    if not pr:
        out.append("No `prrnet bench --breakdown` records.")
        return "\n".join(out)
    keys = []
    for r in pr:
        k = (r.get("preset"), r.get("size"), r.get("batch"), r.get("mode"), r.get("precision"))
        if k not in keys:
            keys.append(k)
    order = {m: i for i, m in enumerate(MODES)}
    porder = {p: i for i, p in enumerate(PRECISIONS)}
    keys.sort(key=lambda k: (str(k[0]), str(k[1]), str(k[2]), order.get(k[3], 9), porder.get(k[4], 9)))
    for k in keys:
        preset, size, batch, mode, prec = k
        r = latest([x for x in pr if (x.get("preset"), x.get("size"), x.get("batch"), x.get("mode"),
                                      x.get("precision")) == k])
        ref = latest([x for x in bench if x.get("impl") == "pytorch-eager" and x.get("breakdown")
                      and (x.get("preset"), x.get("size"), x.get("batch"), x.get("mode"),
                           x.get("precision")) == k])
        ref_ms = {s["stage"]: s.get("ms") for s in (ref or {}).get("breakdown", [])}
        mm_rate = peaks.get(f"{prec}_tflops") if peaks else None
        fp32_rate = peaks.get("fp32_tflops") if peaks else None
        bw = peaks.get("dram_gbps") if peaks else None
        out.append(f"**{preset} {size}×{size}, batch {batch}, {mode}, {prec}** — prrnet on "
                   f"{r.get('device', '?')} ({r.get('timer', '?')}, `{r.get('_file', '?')}`); "
                   f"PyTorch eager: {('`' + ref['_file'] + '`') if ref else DASH}")
        out.append("")
        header = ["stage", "GFLOP", "GB", "compute floor ms", "memory floor ms", "floor ms",
                  "prrnet ms", "prrnet / floor", "PyTorch ms", "prrnet / PyTorch"]
        rows = []
        tot = {"gflop": 0.0, "gb": 0.0, "floor": 0.0, "ms": 0.0, "ref": 0.0}
        have_floor, have_ref = True, bool(ref_ms)
        stages = sorted(r["breakdown"], key=lambda s: STAGE_ORDER.index(s["stage"])
                        if s["stage"] in STAGE_ORDER else 99)
        for s in stages:
            gflop, mm, gb, ms = s.get("gflop"), s.get("matmul_gflop"), s.get("gbytes"), s.get("ms")
            if gflop is not None and mm is not None and mm_rate and fp32_rate:
                # Matrix products at this precision's GEMM rate, the rest at the fp32 rate:
                # GFLOP / (TFLOP/s) = ms.
                comp = mm / mm_rate + (gflop - mm) / fp32_rate
            else:
                comp = None
            memf = gb / bw * 1e3 if (gb is not None and bw) else None
            floor = max(comp, memf) if (comp is not None and memf is not None) else None
            rms = ref_ms.get(s["stage"])
            rows.append([s["stage"], fmt(gflop, ".2f"), fmt(gb, ".3f"), fmt(comp, ".3f"),
                         fmt(memf, ".3f"), fmt(floor, ".3f"), fmt(ms, ".2f"),
                         fmt(ms / floor if (floor and ms is not None) else None, ".1f", "×"),
                         fmt(rms, ".2f"),
                         fmt(ms / rms if (rms and ms is not None) else None, ".2f", "×")])
            tot["gflop"] += gflop or 0.0
            tot["gb"] += gb or 0.0
            tot["ms"] += ms or 0.0
            if floor is None:
                have_floor = False
            else:
                tot["floor"] += floor
            if rms is None:
                have_ref = False if s["stage"] != "other" else have_ref
            else:
                tot["ref"] += rms
        rows.append(["**step**", fmt(tot["gflop"], ".1f"), fmt(tot["gb"], ".2f"), "", "",
                     fmt(tot["floor"] if have_floor else None, ".2f"), fmt(tot["ms"], ".2f"),
                     fmt(tot["ms"] / tot["floor"] if have_floor and tot["floor"] else None, ".1f", "×"),
                     fmt(tot["ref"] if have_ref else None, ".2f"),
                     fmt(tot["ms"] / tot["ref"] if have_ref and tot["ref"] else None, ".2f", "×")])
        out.append(md_table(header, rows))
        out.append("")
        extra = []
        if r.get("breakdown_step_ms") is not None:
            extra.append(f"prrnet whole step during the breakdown {fmt(r['breakdown_step_ms'], '.2f')} ms, "
                         f"plain timing {fmt(r.get('ms_median'), '.2f')} ms")
        if ref and ref.get("breakdown_step_ms") is not None:
            extra.append(f"PyTorch eager whole step during its breakdown "
                         f"{fmt(ref['breakdown_step_ms'], '.2f')} ms, plain {fmt(ref.get('ms_median'), '.2f')} ms")
        if extra:
            out.append("; ".join(extra) + ".")
            out.append("")
    out.append("prrnet / floor: how far the measured stage is from its floor; prrnet / PyTorch: "
               "the measured time over PyTorch eager's for the same stage (below 1: prrnet is "
               "faster). "
               "Floor = max(compute floor, memory floor): compute = matrix-product GFLOP / the "
               "measured GEMM rate of the precision + other GFLOP / the fp32 GEMM rate; memory = "
               "minimum bytes / the measured copy bandwidth. `other` = the step's time outside "
               "every stage (the backward's gradient zeroing on prrnet).")
    return "\n".join(out)


def kernels(kern, limit=10):
    out = []
    if not kern:
        return "No `nsys stats --report cuda_gpu_kern_sum` or `ncu` kernel output in this folder."
    for path, rows, window_iters in kern:
        rows = sorted(rows, key=lambda r: -r["total_ns"])
        total = sum(r["total_ns"] for r in rows)
        out.append(f"From `{os.path.basename(path)}` ({window_iters} iteration(s) in the capture "
                   f"window; times per iteration; all kernels together "
                   f"{fmt(total / window_iters / 1e6, '.2f')} ms):")
        out.append("")
        trs = []
        for i, r in enumerate(rows[:limit], 1):
            name = r["name"]
            if len(name) > 90:
                name = name[:87] + "..."
            name = name.replace("|", "\\|")
            trs.append([i, f"`{name}`", fmt(r["total_ns"] / window_iters / 1e6, ".3f"),
                        fmt(100.0 * r["total_ns"] / total if total else None, ".1f", "%"),
                        fmt(r["instances"] / window_iters if r.get("instances") is not None else None, ".0f"),
                        fmt(r["avg_ns"] / 1e3 if r.get("avg_ns") is not None else None, ".1f")])
        out.append(md_table(["#", "kernel", "ms / iteration", "share", "launches / iteration",
                             "avg µs"], trs))
        out.append("")
    return "\n".join(out)


RELATION_COLUMNS = ("impl", "version", "precision", "pass", "batch", "h", "w", "c", "n",
                    "ms_median", "tflops", "gemm_tflops", "pct_of_gemm", "executed_tflops",
                    "gbps_model",
                    "peak_mem_bytes")


def relation_table(recs):
    """The relation benchmarks' records as they are: the known columns of
    `prrnet bench-relation` / `reference/bench_relation.py` when present, else every scalar."""
    if not recs:
        return "No relation-benchmark records in this folder."
    keys = [k for k in RELATION_COLUMNS if any(k in r for r in recs)]
    if len(keys) < 4:
        keys = []
        for r in recs:
            for k, v in r.items():
                if k != "_file" and not isinstance(v, (dict, list)) and k not in keys:
                    keys.append(k)
        keys = keys[:14]

    def cell(r, k):
        v = r.get(k)
        if v is None:
            return DASH
        if k == "peak_mem_bytes" and isinstance(v, (int, float)):
            return fmt(v / 2**30, ".2f", " GiB")
        if isinstance(v, float):
            return fmt(v, ".3f" if abs(v) < 100 else ".1f")
        return str(v)

    rows = [[cell(r, k) for k in keys] + [f"`{r['_file']}`"] for r in recs]
    extra = ""
    if any("error" in r for r in recs):
        extra = "\n\nRecords with an `error` field failed; see their logs."
    return md_table(list(keys) + ["log"], rows) + extra


def kernel_choice_tables(bench):
    """The kernels a prrnet run chose by measurement (`kernel_choices` in `prrnet bench --json`:
    convolution paths under PRRNET_CONV_ALGO=auto, relation versions), one table per run with
    every candidate's median time, the candidate the others' outputs were checked against and
    those left out (a failed launch, or an output that disagreed)."""
    runs = [r for r in bench if r.get("impl") == "prrnet" and r.get("kernel_choices")]
    if not runs:
        return "No run in this folder recorded kernel choices."
    out = []
    for r in runs:
        out.append(f"**{r.get('preset')} {r.get('size')}×{r.get('size')}, batch {r.get('batch')}, "
                   f"{r.get('mode')}, {r.get('precision')}** (`{r.get('_file', DASH)}`)")
        out.append("")
        rows = []
        for c in r["kernel_choices"]:
            paths = ", ".join(f"{t.get('path')} {fmt(t.get('ms'), '.3f')}"
                              for t in c.get("paths", []))
            left_out = "; ".join(f"{x.get('path')}: {x.get('reason')}"
                                 for x in c.get("rejected", []))
            rows.append([c.get("op"), c.get("pass"), f"`{c.get('shape')}`",
                         c.get("epilogue") or DASH, c.get("chosen"), paths,
                         c.get("reference") or DASH, left_out or DASH])
        out.append(md_table(["op", "pass", "shape", "epilogue", "chosen", "candidates (ms)",
                             "checked against", "left out"], rows))
        out.append("")
    return "\n".join(out).rstrip()


def journal_open_turns(logdir):
    """The turns of LOGDIR/tune-journal.tsv that began and never ended (src/backend/cuda/
    tune_journal.rs): (candidate, family, key) of each, in the order they began."""
    path = os.path.join(logdir, "tune-journal.tsv")
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    open_turns = {}
    # An unterminated last line (a process stopped while writing it) does not count.
    for line in text[:text.rfind("\n") + 1].splitlines():
        f = line.split("\t")
        if f[0] == "begin" and len(f) == 6:
            open_turns[(f[1], f[2])] = (f[3], f[4], f[5])
        elif f[0] == "end" and len(f) == 3:
            open_turns.pop((f[1], f[2]), None)
    return list(open_turns.values())


def left_out_table(bench, logdir):
    """Every candidate kernel that some run left out (it disagreed with the trusted one, failed,
    or was quarantined after it stopped a process), per kernel family, and the journal's turns
    that never ended: the first thing to read after a GPU run of kernels new to the GPU."""
    families = {}
    for r in bench:
        if r.get("impl") != "prrnet":
            continue
        for c in r.get("kernel_choices") or []:
            fam = f"{c.get('op')} {c.get('pass')} {c.get('precision')}"
            for x in c.get("rejected") or []:
                e = families.setdefault((x.get("path"), fam), {"shapes": set(), "runs": set(),
                                                                 "reason": x.get("reason")})
                e["shapes"].add(c.get("shape"))
                e["runs"].add(r.get("_file", DASH))
    out = []
    if not any(r.get("kernel_choices") for r in bench if r.get("impl") == "prrnet"):
        out.append("No run in this folder recorded kernel choices.")
    elif families:
        rows = [[f"`{path}`", fam, len(e["shapes"]), ", ".join(f"`{f}`" for f in sorted(e["runs"])),
                 e["reason"]]
                for (path, fam), e in sorted(families.items(), key=lambda kv: kv[0])]
        out.append(md_table(["candidate", "family", "shapes", "runs", "first reason"], rows))
    else:
        out.append("No candidate kernel was left out.")
    stops = journal_open_turns(logdir)
    if stops:
        out.append("")
        out.append("Turns that never ended in `tune-journal.tsv` (the candidate stopped its "
                   "process; later runs leave it out of its family):")
        out.append("")
        out.extend(f"- `{c}` in {fam}, at `{key}`" for c, fam, key in stops)
    return "\n".join(out)


def is_relation(r):
    """A relation-benchmark record (not a whole-network run under PRRNET_RELATION_VERSION,
    whose log name also says "relation")."""
    if relation_override(r):
        return False
    hay = " ".join(str(r.get(k, "")) for k in ("kind", "impl", "bench", "_file")).lower()
    return "relation" in hay


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logdir")
    ap.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    ap.add_argument("--window-iters", type=int, default=3,
                    help="iterations in the nsys capture window (kernel times are divided by it)")
    ap.add_argument("--ncu-window-iters", type=int, default=1,
                    help="iterations in the ncu capture window (ncu_*.csv files)")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.logdir):
        print(f"perf-report: {args.logdir} is not a folder", file=sys.stderr)
        return 2
    files = read_files(args.logdir)
    recs = [r for f in files for r in json_records(f)]
    peaks = latest([r for r in recs if r.get("kind") == "peaks"])
    relation = [r for r in recs if is_relation(r) and r.get("kind") != "peaks"]
    # Failed runs first: a later successful record of the same configuration wins.
    bench = [r for f in files for r in failed_bench_runs(f)]
    bench += [r for r in recs if r.get("impl") in IMPLS and r.get("kind") != "peaks"
              and not is_relation(r) and "mode" in r]
    # The PRRNET_CONV_ALGO / PRRNET_RELATION_VERSION runs have their own tables; every other
    # table is the default.
    conv_algo = [r for r in bench if conv_override(r)]
    older = [r for r in bench if relation_override(r)]
    bench = [r for r in bench if not conv_override(r) and not relation_override(r)]
    kern = []
    for f in files:
        rows = parse_kern_sum(f)
        if rows:
            kern.append((f, rows, args.window_iters))
        elif os.path.basename(f).startswith("ncu_"):
            rows = parse_ncu_csv(f)
            if rows:
                kern.append((f, rows, args.ncu_window_iters))
    meta = parse_meta(args.logdir)
    cmds = [(os.path.basename(f), first_command(f)) for f in files]
    cmds = [(f, c) for f, c in cmds if c]

    out = []
    out.append(f"<!-- generated by scripts/perf-report.py from {os.path.abspath(args.logdir)} -->")
    out.append("")
    out.append("Measured: " + (meta.get("date") or DASH) + "; host: " + (meta.get("host") or DASH)
               + "; GPU: " + (meta.get("gpu") or DASH) + ".")
    out.append("")
    out.append("#### Kernels left out")
    out.append("")
    out.append(left_out_table(bench + conv_algo + older, args.logdir))
    out.append("")
    out.append("#### prrnet vs PyTorch eager vs torch.compile")
    out.append("")
    out.append(side_by_side(bench) if bench else "No benchmark records in this folder.")
    out.append("")
    out.append("#### Per-stage floors")
    out.append("")
    out.append(floors(bench, peaks))
    out.append("")
    out.append("#### Top kernels (nsys, or ncu without it)")
    out.append("")
    out.append(kernels(kern))
    out.append("")
    out.append("#### Convolution algorithm in the whole step (the default vs an override)")
    out.append("")
    out.append(conv_algo_table(bench, conv_algo))
    out.append("")
    out.append("#### Convolution benchmarks (`prrnet bench-conv`)")
    out.append("")
    out.append(conv_bench_tables(recs))
    out.append("")
    out.append("#### Kernels chosen by measurement")
    out.append("")
    out.append(kernel_choice_tables(bench))
    out.append("")
    out.append("#### Relation version in the training step (the default vs an override)")
    out.append("")
    out.append(relation_version_table(bench, older))
    out.append("")
    out.append("#### Relation map benchmarks")
    out.append("")
    out.append(relation_table(relation))
    out.append("")
    if cmds:
        out.append("#### Commands")
        out.append("")
        for f, c in cmds:
            out.append(f"- `{f}`: `{c}`")
        out.append("")
    text = "\n".join(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
