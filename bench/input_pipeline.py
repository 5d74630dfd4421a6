"""Benchmark 1, the input pipeline: images/s delivered as augmented (flip + rotation), normalised float
training batches, ours against torchvision's ImageFolder + PIL + transforms.v2 in a DataLoader with 2
workers, on the same image files with the same batch size.

    python bench/input_pipeline.py                       # all 60,000 training images of the demo
    python bench/input_pipeline.py --quick               # 10,000 images, fewer epochs
    python bench/input_pipeline.py --images 20000 --epochs 5 --markdown BENCHMARKS.md

(a) First pass: ours decodes every file into a fresh cache (data.load_images), computes the channel
statistics as the trainer does, and delivers one epoch of batches the way trainer.train_one_epoch gets them
(data.batches, then data.Preprocess with a data.Augment); torchvision starts its workers, decodes and
transforms every image.
(b) Steady state: later epochs (ours from the memory-mapped cache; torchvision with persistent workers),
the two sides interleaved epoch by epoch so that other load on the machine hits both alike.
Both sides read files that are already in the OS page cache, and both deliver 1-channel batches: the
torchvision side opens images as gray ("L"), which is less work than its default RGB loader.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import common  # puts the repository root on sys.path

import numpy as np
import torch

import data

# Fashion-MNIST's training mean and std, for the torchvision side (ours measures them, as the trainer does).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = [0.2860], [0.3530]


# ----------------------------------------------------------------------------------------------
# torchvision: what a user of timm's train.py or torchvision's references would run
# ----------------------------------------------------------------------------------------------

def gray_loader(path: str):
    from PIL import Image
    with open(path, "rb") as f:
        return Image.open(f).convert("L")


def imagefolder_tree(files: list[Path], labels: np.ndarray, class_names: list[str], root: Path) -> Path:
    """The ImageFolder layout (root/<class>/<file>) as symlinks to the demo's images."""
    for i, name in enumerate(class_names):
        (root / f"{i:02d}").mkdir(parents=True)  # class names such as "T-shirt/top" are not folder names
    for path, label in zip(files, labels):
        os.symlink(path.resolve(), root / f"{label:02d}" / path.name)
    return root


def torchvision_loader(tree: Path, batch_size: int, rotate: float, workers: int):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.ToImage(), v2.RandomHorizontalFlip(), v2.RandomRotation(rotate),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    ])
    dataset = ImageFolder(str(tree), transform=transform, loader=gray_loader)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)


def torchvision_epoch(loader) -> int:
    n = 0
    for x, y in loader:
        n += len(y)
    return n


# ----------------------------------------------------------------------------------------------
# Ours: decode once into the cache, then whole-batch augmentation
# ----------------------------------------------------------------------------------------------

def our_epoch(pixels: np.ndarray, labels: np.ndarray, batch_size: int, preprocess: data.Preprocess,
              epoch: int) -> int:
    """One epoch of training batches as trainer.train_one_epoch makes them: data.batches, then the session's
    data.Preprocess with train=True."""
    n = 0
    for x, y in data.batches(pixels, labels, np.arange(len(labels)), batch_size, torch.device("cpu"), shuffle=True,
                             epoch=epoch, drop_last=True):
        x = preprocess(x, train=True)
        n += len(y)
    return n


def our_first_pass(files, labels, img_size, batch_size, augment,
                   cache_dir) -> tuple[int, data.ImageArray, data.Preprocess]:
    images = data.load_images(files, img_size, None, cache_dir, progress=False)
    mean, std = data.channel_stats(images.pixels, np.arange(len(files)))
    preprocess = data.Preprocess(mean, std, augment)
    return our_epoch(images.pixels, labels, batch_size, preprocess, epoch=1), images, preprocess


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    parser = common.build_parser(__doc__)
    parser.add_argument("--images", type=int, default=None, help="how many training images (default 60000, quick 10000)")
    parser.add_argument("--epochs", type=int, default=None, help="steady-state epochs per side (default 3, quick 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--rotate", type=float, default=10.0, help="maximum rotation in degrees")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torchvision side")
    args = parser.parse_args(argv)
    n_images = args.images or (10_000 if args.quick else 60_000)
    epochs = args.epochs or (2 if args.quick else 3)
    root = common.demo_dir(args.data)

    found = data.find_labelled_images(root)
    files, labels = found.files[:n_images], found.labels[:n_images]
    report = common.Report("1. Input pipeline", args)
    print(f"{len(files)} images of {root}, batch {args.batch_size}, {args.img_size}px, flip + rotation "
          f"{args.rotate:g} deg; reading them once into the page cache ...", flush=True)
    common.read_files(files)
    augment = data.Augment(hflip=True, rotate=args.rotate)

    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        tree = imagefolder_tree(files, labels, found.class_names, Path(tmp) / "imagefolder")
        loader = torchvision_loader(tree, args.batch_size, args.rotate, args.workers)

        start = time.perf_counter()
        n = torchvision_epoch(loader)
        tv_first = n / (time.perf_counter() - start)
        print(f"torchvision first pass: {tv_first:,.0f} img/s", flush=True)

        start = time.perf_counter()
        n, images, preprocess = our_first_pass(files, labels, args.img_size, args.batch_size, augment,
                                               Path(tmp) / "cache")
        ours_first = n / (time.perf_counter() - start)
        print(f"ours first pass (decode + cache + batches): {ours_first:,.0f} img/s", flush=True)

        tv_steady, ours_steady = [], []
        for epoch in range(2, epochs + 2):
            start = time.perf_counter()
            n = torchvision_epoch(loader)
            tv_steady.append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            n = our_epoch(images.pixels, labels, args.batch_size, preprocess, epoch)
            ours_steady.append(n / (time.perf_counter() - start))
            print(f"epoch {epoch}: torchvision {tv_steady[-1]:,.0f} img/s, ours {ours_steady[-1]:,.0f} img/s", flush=True)
        del loader, images

    tv, ours = common.median(tv_steady), common.median(ours_steady)
    report.table(
        f"Images/s delivered as augmented, normalised batches ({len(files):,} images, batch {args.batch_size}, "
        f"{args.img_size}px, torch threads {torch.get_num_threads()}; steady state: median of {epochs} epoch(s), with their range)",
        ["pass", "torchvision (ImageFolder + PIL + v2, 2 workers)", "ours (cache + batch augmentation)", "ours / torchvision"],
        [["first (includes decoding)", common.fmt(tv_first), common.fmt(ours_first), common.ratio(ours_first, tv_first)],
         ["steady state (later epochs)", common.with_spread(tv_steady), common.with_spread(ours_steady),
          common.ratio(ours, tv)]])
    report.target("steady state, ours / torchvision", ours / tv, 10)
    report.target("first pass, ours / torchvision", ours_first / tv_first, 1.5)
    report.note(f"torchvision side: ImageFolder over symlinks to the same files, PIL gray loader, "
                f"v2.RandomHorizontalFlip + RandomRotation({args.rotate:g}) + ToDtype + Normalize, "
                f"DataLoader(batch_size={args.batch_size}, shuffle=True, num_workers={args.workers}, persistent_workers=True).")
    report.note("ours: data.load_images into a fresh cache folder (first pass only), data.channel_stats, then "
                "data.batches + data.Preprocess(mean, std, data.Augment(hflip, rotate)), as the trainer runs them.")
    report.finish()
    return report


if __name__ == "__main__":
    main()
