"""Benchmark 3, time to accuracy: seconds of training for train_cnn.py on the demo competition to reach
93% accuracy on the demo's test set, and the accuracy reached within 5 minutes of training.

    python bench/time_to_accuracy.py                     # train_cnn.py --epochs 4 --val-split 0 on all 60,000 images
    python bench/time_to_accuracy.py --quick             # 10,000 training images, 2 epochs (the 93% target needs the full run)
    python bench/time_to_accuracy.py --epochs 5 --train-args "--label-smoothing 0.1"   # try another recipe
    python bench/time_to_accuracy.py --script train_resnet.py --epochs 2               # another architecture

One run of train_cnn.py (or --script) with --val-split 0 (every training image is trained on; best.pt is then the
latest epoch). As each epoch ends (its run.json counts it done), its best.pt is copied aside; afterwards every
copy is scored the way a user scores a submission: predict.py writes the submission for the test images and it is
compared with solution.csv. Training time is the sum of metrics.csv's `seconds` (the epochs' own time:
no decoding, precision choice, checkpointing or scoring); wall-clock time since the start of the
process is shown beside it.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import common  # puts the repository root on sys.path

import predict
import runs
from submission import submission_accuracy

SUMMARY_KEYS = ("epochs", "batch_size", "img_size", "lr", "weight_decay", "warmup_epochs", "hflip", "rotate",
                "label_smoothing", "optimizer", "precision")


def train_with_snapshots(args, data_dir: Path, work: Path) -> tuple[list[dict], common.Finished, Path]:
    """Run the train script, copying best.pt aside as each epoch ends; returns one row per epoch."""
    run_dir = work / "runs" / "time-to-accuracy"
    snapshots = work / "snapshots"
    snapshots.mkdir()
    clock, done = {}, threading.Event()

    def watch():
        # The trainer counts an epoch in run.json after writing its best.pt; the next best.pt comes an epoch later.
        copied = 0
        while True:
            last_look = done.wait(0.1)
            epoch = (runs.read_run_info(run_dir) or {}).get("epochs_done", 0)
            if epoch > copied:
                shutil.copy2(run_dir / "best.pt", snapshots / f"epoch-{epoch}.pt")
                clock[epoch], copied = time.perf_counter() - start, epoch
            if last_look:
                return

    def show(line: str):
        print("   ", line.rstrip(), flush=True)

    cmd = [args.script, "--data", data_dir, "--epochs", args.epochs, "--val-split", "0", "--runs-dir",
           work / "runs", "--name", run_dir.name, "--no-progress", *shlex.split(args.train_args)]
    watcher = threading.Thread(target=watch, daemon=True)
    start = time.perf_counter()
    watcher.start()
    try:
        finished = common.check(common.run_python(cmd, echo=True, on_line=show), args.script)
    finally:
        done.set()
        watcher.join()
    rows, total = [], 0.0
    for m in runs.read_metrics(run_dir / "metrics.csv"):
        total += m["seconds"]
        epoch = int(m["epoch"])
        if not (snapshots / f"epoch-{epoch}.pt").is_file():
            sys.exit(f"error: epoch {epoch}'s best.pt was not copied in time (the next epoch had already ended)")
        rows.append({"epoch": epoch, "train_seconds": total, "wall_seconds": clock[epoch],
                     "train_acc": m["train_acc"], "images_per_s": m["images_per_s"],
                     "snapshot": snapshots / f"epoch-{epoch}.pt"})
    return rows, finished, run_dir


def score_snapshot(snapshot: Path, data_dir: Path, out: Path) -> float:
    """predict.py's submission for the test images, scored against solution.csv."""
    logging.getLogger("imgcomp").setLevel(logging.WARNING)  # its per-model line, once per epoch, is noise here
    with contextlib.redirect_stdout(io.StringIO()):
        predict.main([str(snapshot), "--data", str(data_dir), "--out", str(out), "--no-progress"])
    return submission_accuracy(out, data_dir / "solution.csv")


def main(argv=None):
    parser = common.build_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the run (default 4: about what 5 minutes hold on 2 cores; quick 2)")
    parser.add_argument("--images", type=int, default=None,
                        help="train on the first N training images only (default all, quick 10000)")
    parser.add_argument("--train-args", default="", help="more flags for the train script, in one string")
    parser.add_argument("--script", default="train_cnn.py", help="the train script (another architecture's, or a variant)")
    parser.add_argument("--accuracy", type=float, default=0.93, help="the accuracy to reach")
    parser.add_argument("--budget", type=float, default=300, help="seconds of training allowed")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (2 if args.quick else 4)
    n_images = args.images or (10_000 if args.quick else None)
    root = common.demo_dir(args.data)
    report = common.Report("3. Time to accuracy", args)

    with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
        work = Path(tmp)
        data_dir = common.subset_competition(root, work / "subset", n_images) if n_images else root
        rows, finished, run_dir = train_with_snapshots(args, data_dir, work)
        for row in rows:
            row["test_acc"] = score_snapshot(row["snapshot"], data_dir, work / "submission.csv")
            print(f"epoch {row['epoch']}: {row['train_seconds']:.0f} s of training, test accuracy "
                  f"{row['test_acc']:.4f}", flush=True)
        config = json.loads((run_dir / "config.json").read_text())
        mode = (runs.read_run_info(run_dir) or {}).get("mode", "?")

    reached = next((r for r in rows if r["test_acc"] >= args.accuracy), None)
    within = [r for r in rows if r["train_seconds"] <= args.budget]
    at_budget = within[-1] if within else None
    report.table(
        f"{args.script} on {'the first %d training images of ' % n_images if n_images else ''}the demo "
        f"({args.epochs} epochs, {mode}); test accuracy of each epoch's checkpoint",
        ["epoch", "training s (cumulative)", "wall-clock s since start", "train images/s", "train acc", "test acc"],
        [[str(r["epoch"]), f"{r['train_seconds']:.0f}", f"{r['wall_seconds']:.0f}", common.fmt(r["images_per_s"]),
          f"{r['train_acc']:.4f}", f"{r['test_acc']:.4f}"] for r in rows])
    pct = f"{100 * args.accuracy:g}%"
    report.target(f"training seconds to {pct} test accuracy", reached["train_seconds"] if reached else None,
                  args.budget, unit=" s", higher_is_better=False,
                  note=f"epoch {reached['epoch']}" if reached else
                  f"not reached in {len(rows)} epochs (best {max(r['test_acc'] for r in rows):.4f})")
    report.target(f"test accuracy within {args.budget:g} s of training",
                  100 * at_budget["test_acc"] if at_budget else None, 100 * args.accuracy, unit="%",
                  note=f"epoch {at_budget['epoch']}, {at_budget['train_seconds']:.0f} s" if at_budget else
                  "the first epoch took longer than that")
    train_cmd = [args.script, "--data", args.data, "--epochs", args.epochs, "--val-split", "0", *shlex.split(args.train_args)]
    report.note(f"the run: python {' '.join(shlex.quote(str(a)) for a in train_cmd)}; the whole process took "
                f"{finished.seconds:.0f} s wall-clock.")
    if n_images:
        report.note(f"--quick: trained on {n_images} of the training images, so the accuracy target is out of reach "
                    f"by design; run without --quick for the real figure.")
    epoch_s = rows[-1]["train_seconds"] / len(rows)
    mean_rate = sum(r["images_per_s"] for r in rows) / len(rows)
    report.note(f"an epoch took {epoch_s:.0f} s of training on average ({mean_rate:,.0f} images/s); "
                f"{args.budget:g} s hold {args.budget / epoch_s:.1f} epochs.")
    report.note("run configuration: " + " ".join(f"{k}={config[k]}" for k in SUMMARY_KEYS if k in config))
    report.finish()
    return report


if __name__ == "__main__":
    main()
