"""PyTorch reference implementation of PRRNet, written against docs/SPEC.md.

This module is the numerical yardstick for the Rust crate: it computes exactly what
SPEC.md describes, with parameter names that match the checkpoint format (SPEC §9):
backbone parameters are timm's `hrnet_w30` names prefixed `backbone.`, head parameters
are `pr.*` and `rr.*`.

The relation map is materialised densely here (B x N x N); that is fine for a reference
and for small inputs, and is the one thing the fused GPU kernel must not do.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# timm supplies the HRNet building blocks (and hence the parameter names).
from timm.models.hrnet import HighResolutionModule
from timm.models.resnet import BasicBlock, Bottleneck

BN_MOMENTUM = 0.1
LAMBDA_CLS = 0.1

# Structural presets (SPEC §2).
PRESETS: Dict[str, dict] = {
    "w30": dict(stem=64, layer1_blocks=4, layer1_width=64, modules=(1, 4, 3), blocks=4,
                widths=(30, 60, 120, 240), size=299),
    "tiny": dict(stem=16, layer1_blocks=1, layer1_width=8, modules=(1, 1, 1), blocks=1,
                 widths=(4, 8, 12, 16), size=64),
}


@dataclass
class PRRNetConfig:
    preset: str = "w30"
    n: int = 5
    groups: int = 1

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}")
        if self.n < 3:
            raise ValueError("n must be >= 3")
        if self.groups < 1 or 128 % self.groups != 0:
            raise ValueError(f"groups={self.groups} must divide 128")

    def to_json(self, size: Optional[int] = None) -> str:
        d = asdict(self)
        if size is not None:
            d["size"] = int(size)
        return json.dumps(d, separators=(",", ":"))


# --------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------
class SizedFuseModule(HighResolutionModule):
    """timm's HRNet module, but the j > i fuse paths are resized to branch i's exact size.

    timm scales by 2**(j-i) with nn.Upsample, which only works when every stride-2 conv
    halves exactly; SPEC §2/§6 asks for a nearest resize to the target branch size instead.
    The nn.Upsample submodule has no parameters, so it is left in place (unused) and the
    parameter names stay identical to timm's.
    """

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:  # type: ignore[override]
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.num_branches == 1:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            target = xs[i].shape[-2:]
            acc = None
            for j, path in enumerate(row):
                if j > i:
                    t = path[1](path[0](xs[j]))  # 1x1 conv, BN
                    t = F.interpolate(t, size=target, mode="nearest")
                else:
                    t = path(xs[j])  # identity (j == i) or the stride-2 chain (j < i)
                acc = t if acc is None else acc + t
            fused.append(self.fuse_act(acc))
        return fused


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


class HRNetBackbone(nn.Module):
    """HRNet trunk with timm's hrnet_w30 module tree (no classification head)."""

    def __init__(self, preset: str):
        super().__init__()
        p = PRESETS[preset]
        stem, widths = p["stem"], p["widths"]
        self.widths = tuple(widths)

        self.conv1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, momentum=BN_MOMENTUM)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(stem, stem, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem, momentum=BN_MOMENTUM)
        self.act2 = nn.ReLU(inplace=True)

        # layer1: Bottlenecks, the first one with a 1x1 projection shortcut.
        width = p["layer1_width"]
        l1_out = width * Bottleneck.expansion
        blocks = []
        cin = stem
        for b in range(p["layer1_blocks"]):
            down = None
            if cin != l1_out:
                down = nn.Sequential(nn.Conv2d(cin, l1_out, 1, 1, bias=False),
                                     nn.BatchNorm2d(l1_out, momentum=BN_MOMENTUM))
            blocks.append(Bottleneck(cin, width, 1, down))
            cin = l1_out
        self.layer1 = nn.Sequential(*blocks)

        # transitions and stages
        self.transition1 = self._transition([l1_out], list(widths[:2]))
        self.stage2 = self._stage(p["modules"][0], p["blocks"], list(widths[:2]))
        self.transition2 = self._transition(list(widths[:2]), list(widths[:3]))
        self.stage3 = self._stage(p["modules"][1], p["blocks"], list(widths[:3]))
        self.transition3 = self._transition(list(widths[:3]), list(widths[:4]))
        self.stage4 = self._stage(p["modules"][2], p["blocks"], list(widths[:4]))

    @staticmethod
    def _transition(prev: List[int], cur: List[int]) -> nn.ModuleList:
        out = []
        for i, c in enumerate(cur):
            if i < len(prev):
                out.append(nn.Identity() if prev[i] == c else
                           nn.Sequential(*_conv_bn_relu(prev[i], c, 1)))
            else:
                # one new branch per stage: a single stride-2 step from the lowest branch
                steps = []
                for k in range(i + 1 - len(prev)):
                    last = k == i - len(prev)
                    steps.append(_conv_bn_relu(prev[-1], c if last else prev[-1], 2))
                out.append(nn.Sequential(*steps))
        return nn.ModuleList(out)

    @staticmethod
    def _stage(num_modules: int, blocks: int, widths: List[int]) -> nn.Sequential:
        mods = []
        for _ in range(num_modules):
            mods.append(SizedFuseModule(len(widths), BasicBlock, tuple([blocks] * len(widths)),
                                        list(widths), tuple(widths), "SUM", True))
        return nn.Sequential(*mods)

    @staticmethod
    def _apply_transition(trans: nn.ModuleList, ys: List[torch.Tensor]) -> List[torch.Tensor]:
        return [ys[i] if isinstance(t, nn.Identity) else t(ys[min(i, len(ys) - 1)])
                for i, t in enumerate(trans)]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = [t(x) for t in self.transition1]
        ys = self.stage2(ys)
        ys = self.stage3(self._apply_transition(self.transition2, ys))
        ys = self.stage4(self._apply_transition(self.transition3, ys))
        return ys


# --------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------
class RelationConvs(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, n - 2)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(p))))


class PixelRelation(nn.Module):
    """PR module (SPEC §4): relation encoder + region feature extractor heads."""

    def __init__(self, c_in: int, n: int):
        super().__init__()
        self.n = n
        self.proj = nn.Conv2d(c_in, 256, 1)
        self.rel = RelationConvs(n)
        self.mask = nn.Conv2d(256 + 64, 1, 1)


class FeatureMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(320, 128)
        self.bn = nn.BatchNorm1d(128, momentum=BN_MOMENTUM)
        self.fc2 = nn.Linear(128, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class Classifier(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.fc1 = nn.Linear(3 * groups, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(z))).squeeze(1)


class RegionRelation(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.fm = FeatureMap()
        self.cls = Classifier(groups)


def relation_map(f_in: torch.Tensor, n: int) -> torch.Tensor:
    """P [B, N, n, n]: row-softmax of pixel cosine similarities, adaptive-avg-pooled per row."""
    b, c, h, w = f_in.shape
    norm = f_in.pow(2).sum(1, keepdim=True).sqrt()
    q = f_in / norm.clamp_min(1e-12)
    q = q.flatten(2).transpose(1, 2)  # [B, N, C], pixel i = y*W + x
    sim = torch.bmm(q, q.transpose(1, 2))  # [B, N, N]
    r = torch.softmax(sim, dim=-1)
    p = F.adaptive_avg_pool2d(r.reshape(b * h * w, 1, h, w), (n, n))
    return p.reshape(b, h * w, n, n)


def region_metrics(a: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """z = [cos (G), euc (G), inn (G)] per SPEC §5, explicit formulas."""
    bs = a.shape[0]
    ag = a.reshape(bs, groups, -1)
    bg = b.reshape(bs, groups, -1)
    dot = (ag * bg).sum(-1)
    na = ag.pow(2).sum(-1).sqrt().clamp_min(1e-8)
    nb = bg.pow(2).sum(-1).sqrt().clamp_min(1e-8)
    cos = 1.0 - dot / (na * nb)
    euc = ((ag - bg).pow(2).sum(-1) + 1e-12).sqrt()
    return torch.cat([cos, euc, dot], dim=1)


class PRRNet(nn.Module):
    def __init__(self, cfg: PRRNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = HRNetBackbone(cfg.preset)
        c_in = sum(self.backbone.widths)
        self.pr = PixelRelation(c_in, cfg.n)
        self.rr = RegionRelation(cfg.groups)

    def forward(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None,
                label: Optional[torch.Tensor] = None,
                mask_weight: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        xs = self.backbone(image)
        h, w = xs[0].shape[-2:]
        ups = [xs[0]] + [F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
                         for x in xs[1:]]
        f_in = torch.cat(ups, dim=1)
        out["features"] = f_in

        # PR: relation encoder
        bsz = f_in.shape[0]
        n = self.cfg.n
        p = relation_map(f_in, n)
        out["relation"] = p
        rel = self.pr.rel(p.reshape(bsz * h * w, 1, n, n))  # [B*N, 64, 1, 1]
        f_rel = rel.reshape(bsz, h, w, 64).permute(0, 3, 1, 2)
        out["f_rel"] = f_rel
        f_vis = self.pr.proj(f_in)
        f_upd = torch.cat([f_vis, f_rel], dim=1)
        out["f_upd"] = f_upd

        # PR: region feature extractor
        mask_logit = self.pr.mask(f_upd)
        m = torch.sigmoid(mask_logit)
        out["mask_logit"] = mask_logit
        out["mask"] = m
        flat = f_upd.flatten(2)  # [B, 320, N]
        mf = m.flatten(2)  # [B, 1, N]
        f_man = (flat * mf).sum(-1) / (mf.sum(-1) + 1e-6)
        f_ori = (flat * (1.0 - mf)).sum(-1) / ((1.0 - mf).sum(-1) + 1e-6)
        out["f_man"] = f_man
        out["f_ori"] = f_ori

        # RR
        emb = self.rr.fm(torch.cat([f_man, f_ori], dim=0))
        a, b = emb[:bsz], emb[bsz:]
        z = region_metrics(a, b, self.cfg.groups)
        out["z"] = z
        logit = self.rr.cls(z)
        out["logit"] = logit
        out["score"] = torch.sigmoid(logit)

        if label is not None:
            out.update(self.losses(mask_logit, logit, mask, label, mask_weight))
        return out

    @staticmethod
    def losses(mask_logit: torch.Tensor, logit: torch.Tensor, mask: Optional[torch.Tensor],
               label: torch.Tensor, mask_weight: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """SPEC §7. Branch-free, so torch.compile sees one graph."""
        bsz = logit.shape[0]
        h, w = mask_logit.shape[-2:]
        if mask is None:
            loss_loc = logit.new_zeros(())
        else:
            target = F.adaptive_avg_pool2d(mask, (h, w))
            bce = F.binary_cross_entropy_with_logits(mask_logit, target, reduction="none")
            per_sample = bce.reshape(bsz, -1).mean(1)
            if mask_weight is None:
                mask_weight = torch.ones_like(per_sample)
            wsum = mask_weight.sum()
            loss_loc = (per_sample * mask_weight).sum() / wsum.clamp_min(1.0)
        loss_cls = F.binary_cross_entropy_with_logits(logit, label.to(logit.dtype))
        return {"loss": loss_loc + LAMBDA_CLS * loss_cls, "loss_loc": loss_loc, "loss_cls": loss_cls}


def init_weights(model: nn.Module) -> None:
    """SPEC §8 random init: conv Kaiming-normal (fan_out, ReLU), BN 1/0, linear default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build(preset: str = "w30", n: int = 5, groups: int = 1) -> PRRNet:
    model = PRRNet(PRRNetConfig(preset=preset, n=n, groups=groups))
    init_weights(model)
    return model


def export_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """state_dict in checkpoint form: f32, contiguous, num_batches_tracked dropped."""
    return {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}
