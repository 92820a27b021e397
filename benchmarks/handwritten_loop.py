"""The baseline for benchmarks/train_overhead.py: the loop a careful person writes by hand.

Same work as the engine's `train` stage on presets/quickstart.yaml: a shuffled DataLoader,
a train step, a forward pass on a random val batch, both losses read back every step, a
full-val pass and a checkpoint at the end. No logging framework, no telemetry. On CUDA it
reads both losses with ``.item()`` every step, as most hand-written loops do (a host sync).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "presets"))
import shapes


def main(steps: int, out_dir: str, device: str = "cpu") -> None:
    dev = torch.device(device)
    pin = dev.type == "cuda"
    torch.manual_seed(0)
    train, val = shapes.classification(n_train=2000, n_val=500, size=24)
    torch.manual_seed(0)
    model = shapes.SmallCNN(in_channels=1, outputs=5, width=16).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = DataLoader(train, batch_size=32, shuffle=True, drop_last=True, pin_memory=pin)
    val_loader = DataLoader(
        val,
        batch_size=32,
        pin_memory=pin,
        sampler=RandomSampler(val, replacement=True, num_samples=10**9),
    )
    train_losses, val_losses = [], []
    it, val_it = iter(loader), iter(val_loader)
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        vx, vy = next(val_it)
        vx, vy = vx.to(dev, non_blocking=True), vy.to(dev, non_blocking=True)
        model.eval()
        with torch.no_grad():
            vloss = loss_fn(model(vx), vy)
        model.train()
        train_losses.append(loss.item())
        val_losses.append(vloss.item())
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in DataLoader(val, batch_size=32):
            x, y = x.to(dev), y.to(dev)
            total += loss_fn(model(x), y).item() * len(y)
            n += len(y)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, Path(out_dir) / "ckpt.pt"
    )
    print(f"train {train_losses[0]:.3f} -> {train_losses[-1]:.3f}, val {total / n:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "cpu")
