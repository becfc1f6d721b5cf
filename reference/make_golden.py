"""Write golden files (weights, inputs, PyTorch outputs and gradients) for the Rust tests.

Default (no arguments): regenerate the committed tiny goldens into tests/golden/.
Custom case (used by the Rust suite at test time when PyTorch is present; never commit):

    make_golden.py --preset w30 --size 299 --batch 1 --mode eval --n 5 --groups 1 \
        --seed 0 --out DIR --name w30

Files per case NAME:
    NAME_weights.safetensors    checkpoint (SPEC §9), metadata prrnet.format / prrnet.config
    NAME_input.safetensors      image, mask, label, mask_weight
    NAME_out_eval.safetensors   eval-mode forward + backward of loss
    NAME_out_train.safetensors  train-mode (batch statistics) forward + backward, plus state.*
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prrnet_ref as R  # noqa: E402

OUTPUT_KEYS = ("features", "relation", "f_rel", "f_upd", "mask_logit", "mask", "f_man", "f_ori",
               "logit", "score")
LOSS_KEYS = ("loss", "loss_loc", "loss_cls")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_determinism(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def randomise_model(model: nn.Module, gen: torch.Generator) -> None:
    """Random init (SPEC §8 for convs and linears) plus non-trivial BN parameters and stats."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # kaiming normal, fan_out, ReLU gain, drawn from our generator
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            std = math.sqrt(2.0 / fan_out)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
                    m.bias.copy_((torch.rand(m.bias.shape, generator=gen) * 2 - 1) * bound)
        elif isinstance(m, nn.Linear):
            # PyTorch's default Linear init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias
            bound = 1.0 / math.sqrt(m.in_features)
            with torch.no_grad():
                m.weight.copy_((torch.rand(m.weight.shape, generator=gen) * 2 - 1) * bound)
                m.bias.copy_((torch.rand(m.bias.shape, generator=gen) * 2 - 1) * bound)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_((torch.rand(c, generator=gen) * 2 - 1) * 0.2)
                m.running_mean.copy_((torch.rand(c, generator=gen) * 2 - 1) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.num_batches_tracked.zero_()


def calibrate_bn(model: nn.Module, size: int, gen: torch.Generator, batch: int = 4) -> None:
    """Give eval mode realistic but not exact statistics.

    Random running statistics alone let activations grow layer by layer in eval mode (and
    saturate the mask sigmoid), so the running statistics are first set to the batch
    statistics of a separate random calibration batch (momentum 1 for one pass), then
    perturbed: mean += U(-0.3, 0.3) * std, var *= U(0.7, 1.4).
    """
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    x = torch.randn(batch, 3, size, size, generator=gen)
    model.train()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.0
    with torch.no_grad():
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
        c = m.num_features
        with torch.no_grad():
            std = m.running_var.sqrt()
            m.running_mean.add_((torch.rand(c, generator=gen) * 2 - 1) * 0.3 * std)
            m.running_var.mul_(torch.rand(c, generator=gen) * 0.7 + 0.7)
            m.num_batches_tracked.zero_()


def scale_head_for_golden(model: R.PRRNet, n_pixels: int) -> None:
    """Keep the golden numerically informative.

    * pr.mask: Kaiming fan_out of a 320->1 conv has std 1.41, which saturates the sigmoid
      (M exactly 0 or 1); use std 1/sqrt(320) instead.
    * pr.rel.conv1: P entries are about 1/N, so with Kaiming weights F_rel is almost pure
      bias and the relation path hardly shows in the gradients; scale the weights by 8N.
    """
    with torch.no_grad():
        w = model.pr.mask.weight
        w.mul_(math.sqrt(1.0 / w.shape[1]) / math.sqrt(2.0))
        model.pr.rel.conv1.weight.mul_(8.0 * n_pixels)


def feature_side(size: int) -> int:
    """Stride-4 side: two stride-2 convs with padding 1, out = ceil(in / 2)."""
    return (size + 3) // 4


def blob_mask(size: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth blob in [0, 1]: a soft-edged ellipse at a random position."""
    cy, cx = (torch.rand(2, generator=gen) * 0.5 + 0.25) * size
    ry, rx = (torch.rand(2, generator=gen) * 0.2 + 0.15) * size
    ys = torch.arange(size, dtype=torch.float32).view(-1, 1) + 0.5
    xs = torch.arange(size, dtype=torch.float32).view(1, -1) + 0.5
    d = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
    m = torch.sigmoid((1.0 - d) * 6.0)
    # quantise like an 8-bit grey mask file
    return (torch.round(m * 255.0) / 255.0).view(1, size, size)


def make_inputs(batch: int, size: int, labels: Sequence[float], mask_weight: Sequence[float],
                gen: torch.Generator) -> Dict[str, torch.Tensor]:
    image = torch.randn(batch, 3, size, size, generator=gen)
    image = image + 0.05 * torch.sign(image)  # keep it away from exact zero
    mask = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        if labels[b] > 0.5 and mask_weight[b] > 0.5:
            mask[b] = blob_mask(size, gen)
    return {
        "image": image.contiguous(),
        "mask": mask.contiguous(),
        "label": torch.tensor(list(labels), dtype=torch.float32),
        "mask_weight": torch.tensor(list(mask_weight), dtype=torch.float32),
    }


def run_mode(model: R.PRRNet, inputs: Dict[str, torch.Tensor], train: bool,
             omit: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    model.train(train)
    model.zero_grad(set_to_none=True)
    image = inputs["image"].clone().requires_grad_(True)
    out = model(image, inputs["mask"], inputs["label"], inputs["mask_weight"])
    out["loss"].backward()

    res: Dict[str, torch.Tensor] = {}
    for k in OUTPUT_KEYS:
        if k not in omit:
            res[k] = out[k]
    for k in LOSS_KEYS:
        res[k] = out[k].reshape(1)
    for name, p in model.named_parameters():
        if p.grad is None:
            raise RuntimeError(f"no gradient for {name}")
        res[f"grad.{name}"] = p.grad
    res["grad.image"] = image.grad
    if train:
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                res[f"state.{name}"] = buf
    return {k: v.detach().float().contiguous().clone() for k, v in res.items()}


def write_case(out_dir: str, name: str, preset: str, size: int, n: int, groups: int,
               labels: Sequence[float], mask_weight: Sequence[float], seed: int,
               modes: Sequence[str], omit: Sequence[str] = ()) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = R.PRRNet(R.PRRNetConfig(preset=preset, n=n, groups=groups))
    randomise_model(model, gen)
    h = feature_side(size)
    scale_head_for_golden(model, h * h)
    calibrate_bn(model, size, gen)
    inputs = make_inputs(len(labels), size, labels, mask_weight, gen)

    written = []
    meta = {"prrnet.format": "1", "prrnet.config": model.cfg.to_json(size)}
    path = os.path.join(out_dir, f"{name}_weights.safetensors")
    save_file(R.export_state(model), path, metadata=meta)
    written.append(path)
    path = os.path.join(out_dir, f"{name}_input.safetensors")
    save_file(inputs, path, metadata=meta)
    written.append(path)
    for mode in modes:
        res = run_mode(model, inputs, train=(mode == "train"), omit=omit)
        check_nontrivial(name, mode, res)
        path = os.path.join(out_dir, f"{name}_out_{mode}.safetensors")
        save_file(res, path, metadata=meta)
        written.append(path)
    return written


def check_nontrivial(name: str, mode: str, res: Dict[str, torch.Tensor]) -> None:
    for k, v in res.items():
        if not torch.isfinite(v).all():
            raise RuntimeError(f"{name}/{mode}: {k} has non-finite values")
    zero = [k for k, v in res.items() if k.startswith("grad.") and v.abs().max().item() == 0.0]
    if zero:
        raise RuntimeError(f"{name}/{mode}: all-zero gradients: {zero}")


# The committed cases: (name, preset, size, n, groups, labels, mask_weight, seed)
COMMITTED = [
    ("tiny64", "tiny", 64, 5, 1, [0.0, 1.0], [1.0, 1.0], 64),
    ("tiny50", "tiny", 50, 4, 2, [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], 50),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(R.PRESETS))
    ap.add_argument("--size", type=int)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mode", choices=["eval", "train", "both"], default="both")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--omit", action="append", default=[], choices=OUTPUT_KEYS,
                    help="leave this activation out of the output files (repeatable; to save space)")
    args = ap.parse_args(argv)
    setup_determinism(args.threads)

    if args.preset is None:
        out = args.out or os.path.join(REPO, "tests", "golden")
        for case in COMMITTED:
            name, preset, size, n, groups, labels, mw, seed = case
            for p in write_case(out, name, preset, size, n, groups, labels, mw, seed, ["eval", "train"], args.omit):
                print(f"{p}  {os.path.getsize(p)} bytes")
        return 0

    size = args.size or R.PRESETS[args.preset]["size"]
    name = args.name or f"{args.preset}{size}"
    out = args.out or "."
    # sample 0 fake with a mask, then alternating real / fake; every mask counts
    labels = [1.0 if b % 2 == 0 else 0.0 for b in range(args.batch)]
    mw = [1.0] * args.batch
    modes = ["eval", "train"] if args.mode == "both" else [args.mode]
    for p in write_case(out, name, args.preset, size, args.n, args.groups, labels, mw, args.seed, modes, args.omit):
        print(f"{p}  {os.path.getsize(p)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
