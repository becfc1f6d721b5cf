"""Independent sanity checks of prrnet_ref against timm and against SPEC formulas.

Run: .torch-venv/bin/python reference/check_ref.py
"""
import math
import sys

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import prrnet_ref as R  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(2)
HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def check_keys():
    ref = R.HRNetBackbone("w30")
    cls = timm.create_model("hrnet_w30", pretrained=False)
    want = {k: tuple(v.shape) for k, v in cls.state_dict().items()
            if not k.startswith(HEAD_PREFIXES) and not k.endswith("num_batches_tracked")}
    got = {k: tuple(v.shape) for k, v in ref.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    assert want == got, (set(want) ^ set(got))
    print(f"keys: w30 backbone == timm hrnet_w30 minus head ({len(got)} tensors)")


def randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = (torch.rand(c, generator=g) - 0.5) * 0.4
            m.running_mean = (torch.rand(c, generator=g) - 0.5) * 0.6
            m.running_var = torch.rand(c, generator=g) + 0.5


def check_vs_timm(size=256):
    ref = R.HRNetBackbone("w30")
    R.init_weights(ref)
    randomise_bn(ref)
    ref.eval()
    feat = timm.create_model("hrnet_w30", pretrained=False, features_only=True,
                             feature_location="", out_indices=(1, 2, 3, 4))
    missing, unexpected = feat.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    feat.eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        a = ref(x)
        b = feat(x)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, (u.shape, v.shape)
        d = (u - v).abs().max().item()
        assert d == 0.0, d
    print(f"backbone == timm hrnet_w30 features_only at S={size}: shapes {[tuple(t.shape[1:]) for t in a]}, max diff 0")
    with torch.no_grad():
        c = ref(torch.randn(1, 3, 299, 299))
    assert [t.shape[-1] for t in c] == [75, 38, 19, 10], [t.shape for t in c]
    print("S=299 branch sizes", [t.shape[-1] for t in c])


def check_relation():
    n, h, w, c = 5, 7, 9, 6
    f = torch.randn(2, c, h, w)
    p = R.relation_map(f, n)
    # independent computation: explicit bins, explicit softmax, loops
    q = f.flatten(2).transpose(1, 2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    s = q @ q.transpose(1, 2)
    e = torch.exp(s - 1.0)
    l = e.sum(-1)
    bins_y = [(math.floor(u * h / n), math.ceil((u + 1) * h / n)) for u in range(n)]
    bins_x = [(math.floor(u * w / n), math.ceil((u + 1) * w / n)) for u in range(n)]
    ee = e.reshape(2, h * w, h, w)
    want = torch.empty(2, h * w, n, n)
    for u, (y0, y1) in enumerate(bins_y):
        for v, (x0, x1) in enumerate(bins_x):
            cnt = (y1 - y0) * (x1 - x0)
            want[:, :, u, v] = ee[:, :, y0:y1, x0:x1].sum((-1, -2)) / (l * cnt)
    d = (p - want).abs().max().item()
    assert d < 1e-6, d
    # weighted row sums: sum_b P_ib * |b| * (#bins covering each pixel)^-1 ... simpler: with
    # non-overlapping bins (n | H, n | W) rows sum to 1 after weighting by |b|.
    f2 = torch.randn(1, c, 10, 15)
    p2 = R.relation_map(f2, 5)
    wsum = (p2 * (2 * 3)).sum((-1, -2))
    assert (wsum - 1).abs().max().item() < 1e-5
    print(f"relation map: matches explicit bins (max diff {d:.2e}); weighted rows sum to 1")


def check_metrics():
    a = torch.randn(3, 128)
    b = torch.randn(3, 128)
    z = R.region_metrics(a, b, 4)
    ag, bg = a.view(3, 4, 32), b.view(3, 4, 32)
    cos = 1 - F.cosine_similarity(ag, bg, dim=-1)
    euc = (ag - bg).norm(dim=-1)
    inn = (ag * bg).sum(-1)
    assert torch.allclose(z, torch.cat([cos, euc, inn], 1), atol=1e-5)
    print("region metrics: cos/euc/inn agree with torch equivalents (G=4)")


def check_full_model():
    for preset, size, n, g in (("tiny", 64, 5, 1), ("tiny", 50, 4, 2)):
        m = R.build(preset, n, g)
        x = torch.randn(2, 3, size, size)
        o = m(x, torch.rand(2, 1, size, size), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]))
        o["loss"].backward()
        print(preset, size, {k: tuple(v.shape) for k, v in o.items()})
    # zero weight everywhere -> loss_loc 0
    o = m(x, torch.rand(2, 1, size, size), torch.tensor([0.0, 1.0]), torch.zeros(2))
    assert o["loss_loc"].item() == 0.0


if __name__ == "__main__":
    check_keys()
    check_relation()
    check_metrics()
    check_full_model()
    check_vs_timm()
    print("all reference checks passed")
