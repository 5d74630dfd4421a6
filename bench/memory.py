"""Benchmark 5, memory: peak resident memory (RSS) of a training run on the demo competition, decoding
included (the images are decoded into a fresh cache folder).

    python bench/memory.py                               # train_cnn.py, 1 epoch on all 60,000 images
    python bench/memory.py --quick                       # the first 10,000 training images
    python bench/memory.py --archs cnn,resnet --epochs 1 --markdown BENCHMARKS.md

The peak is the kernel's own count for that process (ru_maxrss from wait4), so nothing between
samples is missed. It includes the pages of the memory-mapped image cache that the run touched
(60,000 x 28 x 28 bytes, 45 MiB, for the demo at 28px).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import common  # puts the repository root on sys.path

import runs

GIB = 2**30


def phase_rows(samples: list[tuple[float, int, str]]) -> list[list[str]]:
    """The highest RSS sample after each line the run printed."""
    peaks = {}
    for _, rss, last in samples:
        peaks[last] = max(peaks.get(last, 0), rss)
    start = "(start: imports, finding and decoding images, statistics, timing the precision modes)"
    return [[(last[:90] + "...") if len(last) > 90 else (last or start), f"{rss / GIB:.2f} GiB"]
            for last, rss in peaks.items()]


def last_epoch(run_dir: Path, epochs: int) -> str:
    """The run's last row of metrics.csv, in words."""
    rows = runs.read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
    if not rows:
        return ""
    r = rows[-1]
    return (f"epoch {r['epoch']:.0f}/{epochs}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}  "
            f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f}")


def main(argv=None):
    parser = common.build_parser(__doc__)
    parser.add_argument("--archs", default="cnn", help="comma-separated architectures (default: cnn)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=None, help="first N training images (default all, quick 10000)")
    parser.add_argument("--limit-gib", type=float, default=2.0, help="the target: peak below this")
    args = parser.parse_args(argv)
    n_images = args.images or (10_000 if args.quick else None)
    root = common.demo_dir(args.data)
    archs = common.archs(parser, args.archs)
    report = common.Report("5. Memory", args)
    # What importing the toolkit alone holds (torch, timm, OpenCV, ...): the floor under every run.
    imports = common.check(common.run_python(["-c", "import trainer, predict"]), "importing the toolkit").max_rss_bytes
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        data_dir = common.subset_competition(root, work / "subset", n_images, n_test=100) if n_images else root
        for arch in archs:
            cmd = [f"train_{arch}.py", "--data", data_dir, "--epochs", args.epochs, "--runs-dir", work / "runs",
                   "--name", arch, "--cache-dir", work / f"cache-{arch}", "--no-progress"]
            finished = common.check(common.run_python(cmd, echo=True, rss_every=0.1), f"train_{arch}.py")
            print(f"{arch}: peak RSS {finished.max_rss_bytes / GIB:.2f} GiB in {finished.seconds:.0f} s", flush=True)
            run_dir = work / "runs" / arch
            info = runs.read_run_info(run_dir) or {}
            rows.append([arch, f"{finished.max_rss_bytes / GIB:.2f} GiB", f"{finished.seconds:.0f} s",
                         info.get("mode", ""), last_epoch(run_dir, args.epochs)])
            report.table(f"{arch}: peak RSS by phase (sampled every 0.1 s; a phase is what the run had printed last)",
                         ["phase", "peak RSS"], phase_rows(finished.rss_samples))
            report.target(f"{arch}: peak RSS of a {args.epochs}-epoch run", finished.max_rss_bytes / GIB,
                          args.limit_gib, unit=" GiB", higher_is_better=False)
    what = f"the first {n_images:,} training images" if n_images else "all training images"
    report.table(f"Peak resident memory of train_<arch>.py, {args.epochs} epoch(s) on {what} of the demo "
                 f"(default 10% validation split), decoding into a fresh cache",
                 ["arch", "peak RSS", "wall-clock", "precision", "last epoch"], rows)
    report.note(f"importing the toolkit alone (python -c 'import trainer, predict': torch, timm, OpenCV, ...) "
                f"peaks at {imports / GIB:.2f} GiB.")
    report.finish()
    return report


if __name__ == "__main__":
    main()
