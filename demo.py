"""The demo competition: Fashion-MNIST written as a competition in the CSV layout (`write_fashion_mnist`),
from the Debian package's idx files, else torchvision's downloader."""
from __future__ import annotations

import csv
import gzip
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from errors import DataError

log = logging.getLogger("imgcomp")

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist_arrays(source: Path | None = None):
    """Fashion-MNIST as uint8 arrays (train images, train labels, test images, test labels): from `source` (the
    Debian package's folder by default), else downloaded by torchvision."""
    source = source or FASHION_MNIST_DIR
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    if all((source / n).is_file() for n in names):
        return tuple(read_idx(source / n) for n in names)
    log.info("%s not found (Debian package dataset-fashion-mnist); trying torchvision's downloader", source)
    try:
        from torchvision.datasets import FashionMNIST
        with tempfile.TemporaryDirectory() as tmp:
            train, test = FashionMNIST(tmp, train=True, download=True), FashionMNIST(tmp, train=False, download=True)
            return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()
    except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
        raise DataError(f"Fashion-MNIST is not in {source} and could not be downloaded ({e}).\n"
                        "Install it with: apt-get install dataset-fashion-mnist") from None


def write_fashion_mnist(out_dir: str | Path, source: Path | None = None, limit: int | None = None) -> Path:
    """Write Fashion-MNIST as a competition in the CSV layout: train/, train.csv, test/,
    sample_submission.csv, and the test answers in solution.csv. `limit` keeps the first N of each split."""
    out_dir = Path(out_dir)
    if (out_dir / "solution.csv").is_file():
        log.info("%s already holds the demo competition", out_dir)
        return out_dir
    x_train, y_train, x_test, y_test = fashion_mnist_arrays(source)
    if limit:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "test"):
        (tmp / split).mkdir(parents=True)

    def rows(prefix, labels):
        return [(f"{prefix}_{i:05d}", FASHION_MNIST_CLASSES[int(y)]) for i, y in enumerate(labels)]

    train_rows, test_rows = rows("train", y_train), rows("test", y_test)
    jobs = [(tmp / "train" / f"{i}.png", img) for (i, _), img in zip(train_rows, x_train)]
    jobs += [(tmp / "test" / f"{i}.png", img) for (i, _), img in zip(test_rows, x_test)]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(tqdm(pool.map(lambda job: cv2.imwrite(str(job[0]), job[1]), jobs), total=len(jobs),
                  desc="writing PNGs", unit="img", leave=False))

    def write(name, header, body):
        with open(tmp / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(body)

    write("train.csv", ["id", "label"], train_rows)
    write("sample_submission.csv", ["id", "label"], [(i, FASHION_MNIST_CLASSES[0]) for i, _ in test_rows])
    write("solution.csv", ["id", "label"], test_rows)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("wrote %d training and %d test images to %s", len(train_rows), len(test_rows), out_dir)
    return out_dir
