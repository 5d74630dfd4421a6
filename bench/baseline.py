"""A plain PyTorch baseline, independent of the toolkit: what a competent competitor writes in 30 lines. Seven 3x3
conv layers with BatchNorm, global average pooling, AdamW with a one-cycle schedule, flips, batch 64, 15 epochs
at 32 px. It reads a competition in the Kaggle layout (train.csv image_id,category + train_images/, test_images/,
solution.csv) and prints its test accuracy and wall time.

    python bench/baseline.py /tmp/objects
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def read(root: Path, csv_name: str, folder: str, size: int, classes=None):
    rows = list(csv.reader(open(root / csv_name)))[1:]
    files = {p.stem: p for p in (root / folder).iterdir()}
    x = np.stack([cv2.resize(cv2.imread(str(files[r[0]]), cv2.IMREAD_COLOR), (size, size),
                             interpolation=cv2.INTER_AREA) for r in rows])
    classes = classes or sorted({r[1] for r in rows})
    y = np.array([classes.index(r[1]) for r in rows])
    return torch.tensor(x).permute(0, 3, 1, 2).float().div(255), torch.tensor(y), classes


def net(classes: int) -> nn.Module:
    def block(i, o, pool=False):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)] + (
            [nn.MaxPool2d(2)] if pool else [])
    return nn.Sequential(*block(3, 32), *block(32, 64, True), *block(64, 64), *block(64, 128, True),
                         *block(128, 128), *block(128, 256, True), *block(256, 256),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, classes))


def run(root: Path, epochs: int = 15, size: int = 32, batch: int = 64, seed: int = 0) -> dict:
    """Train on the whole training set and score the test set; returns accuracy and seconds."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    x, y, classes = read(root, "train.csv", "train_images", size)
    xt, yt, _ = read(root, "solution.csv", "test_images", size, classes)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    model = net(len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(len(x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            xb = (x[idx] - mean) / std
            flip = torch.rand(len(xb)) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model((xt[i:i + 256] - mean) / std).argmax(1) for i in range(0, len(xt), 256)])
    return {"accuracy": float((pred == yt).float().mean()), "seconds": time.perf_counter() - start}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    result = run(Path(args.data), args.epochs)
    print(f"baseline: test accuracy {result['accuracy']:.4f} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
