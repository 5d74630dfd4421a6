"""Benchmark 8, colour images at 224 px: fine-tuning ResNet-18 from a local weight file on colour images at the
size ImageNet networks are made for, and predicting with it: peak memory (RSS) and images/s, for two dataset
sizes side by side, to show that memory follows the model, not the dataset (the images stay uint8 in a
memory-mapped cache and are batched from it; no float copy of the dataset is ever made).

    python bench/large_images.py                  # 1,000 and 3,000 training images of 256 px, 1 epoch each
    python bench/large_images.py --quick          # 200 and 600

The competition is generated (the demo is 28 px gray): JPEGs of 256x256 px, colour, ten classes of coloured
shapes on noise, resized to 224 px when decoded. The weight file is torchvision's ResNet-18 layout with random
weights, saved as .safetensors: the same loading path as real ImageNet weights (nothing is fetched).
Each run is a new process: `python train_resnet.py --img-size 224 --pretrained FILE --epochs 1`, then
`python predict.py` on the test images; the peak is the kernel's own count (ru_maxrss).
"""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import cv2
import numpy as np

import common  # puts the repository root on sys.path

import runs

GIB = 2**30


def write_competition(root: Path, n_train: int, n_test: int, size: int = 256, seed: int = 0) -> Path:
    """A colour competition in the CSV layout: class k draws a filled circle of colour k at a random place."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, (10, 3))
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            k = int(rng.integers(10))
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            centre = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
            cv2.circle(img, centre, int(rng.integers(size // 8, size // 3)), [int(c) for c in colours[k]], -1)
            cv2.imwrite(str(root / split / f"{split}_{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            rows[split].append((f"{split}_{i:05d}", f"class{k}"))
    for name, header, body in (("train.csv", ["id", "label"], rows["train"]),
                               ("sample_submission.csv", ["id", "label"], [(i, "class0") for i, _ in rows["test"]])):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *body])
    return root


def weight_file(path: Path) -> Path:
    import torchvision
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}, str(path))
    return path


def main(argv=None):
    parser = common.build_parser(__doc__)
    parser.add_argument("--images", default=None, help="comma-separated training set sizes (default 1000,3000; "
                                                       "quick 200,600)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in (args.images or ("200,600" if args.quick else "1000,3000")).split(",")]
    report = common.Report("8. Colour images at 224 px", args)
    imports = common.check(common.run_python(["-c", "import trainer, predict"]), "importing the toolkit").max_rss_bytes
    rows, peaks = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        work = Path(tmp)
        weights = weight_file(work / "resnet18.safetensors")
        for n in sizes:
            comp = write_competition(work / f"comp-{n}", n, max(100, n // 5))
            train = common.check(common.run_python(
                ["train_resnet.py", "--data", comp, "--img-size", 224, "--epochs", 1, "--batch-size", args.batch_size,
                 "--pretrained", weights, "--head-lr-mult", 10, "--runs-dir", work / "runs", "--name", f"r{n}",
                 "--no-progress"], echo=True), "train_resnet.py")
            run = work / "runs" / f"r{n}"
            metrics = runs.read_metrics(run / "metrics.csv")[-1]
            n_test = max(100, n // 5)
            pred = common.check(common.run_python(
                ["predict.py", run, "--data", comp, "--out", work / f"sub-{n}.csv", "--no-progress",
                 "--batch-size", 64]), "predict.py")
            cache = n * 3 * 224 * 224
            rows.append([f"{n:,}", f"{cache / GIB:.2f} GiB", f"{4 * cache / GIB:.2f} GiB",
                         f"{train.max_rss_bytes / GIB:.2f} GiB", f"{metrics['images_per_s']:.1f}",
                         (runs.read_run_info(run) or {}).get("mode", ""), f"{metrics['val_acc']:.3f}",
                         f"{pred.max_rss_bytes / GIB:.2f} GiB", f"{n_test / pred.seconds:.1f}"])
            print(f"{n} images: train peak {train.max_rss_bytes / GIB:.2f} GiB, {metrics['images_per_s']:.1f} img/s; "
                  f"predict peak {pred.max_rss_bytes / GIB:.2f} GiB", flush=True)
            peaks[n] = train.max_rss_bytes
    small, large = sizes[0], sizes[-1]
    grew = (peaks[large] - peaks[small]) / GIB
    float_grew = 4 * (large - small) * 3 * 224 * 224 / GIB
    report.table(f"train_resnet.py --img-size 224 --pretrained FILE, 1 epoch, batch {args.batch_size}; then "
                 "predict.py (end to end: a new process each, decoding included)",
                 ["training images", "uint8 cache", "float32 copy would be", "training: peak RSS", "training img/s",
                  "precision", "val acc", "predict: peak RSS", "predict img/s (end to end)"], rows)
    report.target(f"training peak RSS growth from {small:,} to {large:,} images, as a share of a float32 copy's",
                  grew / float_grew, 0.5, unit="x", higher_is_better=False,
                  note=f"+{grew:.2f} GiB vs +{float_grew:.2f} GiB")
    report.note(f"importing the toolkit alone peaks at {imports / GIB:.2f} GiB; the rest is the model, its "
                "activations at 224 px and the touched pages of the memory-mapped cache.")
    report.finish()
    return report


if __name__ == "__main__":
    main()
