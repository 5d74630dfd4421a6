"""Benchmark 4, prediction: images/s of predict.py writing the submission for the demo's 10,000 test
images, with and without --tta; cold (the test images decoded into a fresh cache) and warm (from the
cache, as every later prediction runs).

    python bench/predict_speed.py                        # trains a 1-epoch CNN first (all training images)
    python bench/predict_speed.py --run runs/NAME        # a run of your own
    python bench/predict_speed.py --quick                # the CNN trained on 2,000 images, fewer repeats

"predict.py's work" is predict.main(ARGS) timed inside this process: loading the checkpoint, finding and
matching the test images, decoding (cold) or mapping the cache (warm), the forward passes and writing the
checked submission; "end to end" is `python predict.py ...` as a new process, interpreter start and
imports included. Test files are read once beforehand, so they come from the OS page cache.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path

import common  # puts the repository root on sys.path

import data
import predict
from checkpoint import checkpoint_file, load_checkpoint, read_spec
from submission import submission_accuracy


def train_model(root: Path, work: Path, n_images: int | None) -> Path:
    """A 1-epoch CNN run on the demo (its first `n_images` training images), to predict with."""
    data_dir = common.subset_competition(root, work / "subset", n_images, n_test=100) if n_images else root
    run = work / "runs" / "cnn-predict"
    common.check(common.run_python(["train_cnn.py", "--data", data_dir, "--epochs", 1, "--val-split", 0,
                                    "--runs-dir", run.parent, "--name", run.name, "--no-progress"], echo=True),
                 "train_cnn.py")
    return run


def timed_predict(argv: list[str]) -> float:
    """Seconds predict.main(argv) takes."""
    logging.getLogger("imgcomp").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        predict.main(argv)
        return time.perf_counter() - start


def main(argv=None):
    parser = common.build_parser(__doc__)
    parser.add_argument("--run", default=None, help="run folder (or checkpoint) to predict with; default: train one")
    parser.add_argument("--repeats", type=int, default=None, help="warm measurements (default 5, quick 2)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    root = common.demo_dir(args.data)
    report = common.Report("4. Prediction", args)
    test_files = data.find_test_images(root)
    common.read_files(test_files)
    n = len(test_files)

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = Path(tmp)
        run = Path(args.run) if args.run else train_model(root, work, 2000 if args.quick else None)
        warm_cache = work / "cache-warm"
        out = work / "submission.csv"
        base = [str(run), "--data", str(root), "--out", str(out), "--no-progress"]
        rows, rates, accuracy = [], {}, {}
        for tta in (False, True):
            flags = ["--tta"] if tta else []
            cold = timed_predict(base + flags + ["--cache-dir", str(work / f"cache-cold-{tta}")])
            accuracy[tta] = submission_accuracy(out, root / "solution.csv")
            timed_predict(base + flags + ["--cache-dir", str(warm_cache)])  # fills the warm cache, warms up
            warm = [timed_predict(base + flags + ["--cache-dir", str(warm_cache)]) for _ in range(repeats)]
            end_to_end = common.check(common.run_python(["predict.py", *base, *flags, "--cache-dir", warm_cache]),
                                      "predict.py")
            rates[tta] = common.median([n / w for w in warm])
            label = "with --tta" if tta else "without --tta"
            rows.append([label, common.fmt(n / cold), common.with_spread([n / w for w in warm]),
                         f"{end_to_end.seconds:.1f} s ({common.fmt(n / end_to_end.seconds)} img/s)",
                         f"{accuracy[tta]:.4f}"])
            print(f"{label}: cold {n / cold:,.0f} img/s, warm {rates[tta]:,.0f} img/s, "
                  f"end to end {end_to_end.seconds:.1f} s", flush=True)
        spec = read_spec(load_checkpoint(checkpoint_file(run)))

    report.table(
        f"predict.py on the {n:,} test images ({spec.arch}, {spec.img_size}px, {spec.compute}, "
        f"batch {predict.build_parser().get_default('batch_size')}; warm: median of {repeats})",
        ["", "cold: decode + predict, img/s", "warm: predict, img/s", "end to end, warm (new process)", "test accuracy"],
        rows)
    report.note(f"TTA costs {rates[False] / rates[True]:.2f}x the time of a plain prediction (warm).")
    trained_on = "the first 2,000 training images (--quick)" if args.quick else "all training images"
    report.note(f"model: {args.run}" if args.run else f"model: train_cnn.py --epochs 1 --val-split 0 on {trained_on}.")
    report.finish()
    return report


if __name__ == "__main__":
    main()
