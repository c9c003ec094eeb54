"""PyTorch eager reference of `sgt bench vision`: the same SGT training step (frozen small CNN,
one-shot Cloak layer with 60% masking and [0, 1] clamp, composite loss with alpha 0.5, AdamW with
weight decay 0) and the same client-side transform. Benchmark only; never a runtime dependency."""
import argparse, json, math, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1)
        self.conv2 = nn.Conv2d(16, 16, 3, 2, 1)
        self.conv3 = nn.Conv2d(16, 32, 3, 1, 1)
        self.conv4 = nn.Conv2d(32, 32, 3, 2, 1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        for c in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(c(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class Cloak(nn.Module):
    def __init__(self, shape, lo=1e-4, hi=2.0, shallow=1.0, percent=0.6):
        super().__init__()
        self.locs = nn.Parameter(torch.zeros(shape))
        self.rhos = nn.Parameter(torch.randn(shape) * 0.1 - 4.0)
        self.lo, self.hi, self.s, self.p = lo, hi, shallow, percent

    def forward(self, x):
        std = self.lo + (self.hi - self.lo) * (1 + torch.tanh(self.rhos / self.s)) / 2
        n = std.numel()
        k = math.ceil(self.p * n - 1e-9)
        keep = torch.ones(n)
        keep[torch.topk(std.detach().flatten(), k).indices] = 0
        keep = keep.view_as(std)
        out = keep * (x + std * torch.randn_like(x)) + self.locs
        return out.clamp(0, 1), std, keep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--apply-batch", type=int, default=256)
    ap.add_argument("--apply-iters", type=int, default=200)
    a = ap.parse_args()
    torch.manual_seed(0)
    clf = SmallCnn().eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    layer = Cloak((1, 28, 28))
    opt = torch.optim.AdamW(layer.parameters(), lr=0.05, weight_decay=0.0)
    x = torch.rand(a.batch_size, 1, 28, 28)
    y = torch.arange(a.batch_size) % 10
    alpha = 0.5

    def step():
        xt, std, keep = layer(x)
        task = F.cross_entropy(clf(xt), y)
        noise = -torch.log((std * keep).sum() / keep.sum())
        loss = (1 - alpha) * task + alpha * noise
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    train_ips = a.steps * a.batch_size / (time.perf_counter() - t0)

    xa = torch.rand(a.apply_batch, 1, 28, 28)
    with torch.no_grad():
        for _ in range(a.warmup):
            layer(xa)
        t0 = time.perf_counter()
        for _ in range(a.apply_iters):
            layer(xa)
        apply_ips = a.apply_iters * a.apply_batch / (time.perf_counter() - t0)
    print(json.dumps({
        "impl": f"pytorch-{torch.__version__}-eager",
        "sgt_train_images_per_s": train_ips,
        "transform_images_per_s": apply_ips,
        "batch_size": a.batch_size,
        "apply_batch": a.apply_batch,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
