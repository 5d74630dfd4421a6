"""Recipes: how well each train_<arch>.py does on competitions it was not tuned on, with its defaults alone (which
follow the data: image size, batch size, learning rate and epochs, recipe.py), against a plain PyTorch baseline
(bench/baseline.py). The competitions are generated (bench/competitions.py, Kaggle layout): objects (64 px colour
shapes at random places on textured backgrounds, one class ten times rarer), centred (28 px grayscale centred
silhouettes) and textures (48 px colour textures).

    python bench/recipes.py                                  # every competition, cnn and resnet (tens of minutes)
    python bench/recipes.py --quick                          # objects only, 600 train / 200 test images
    python bench/recipes.py --kinds objects --archs cnn --work /tmp/recipes     # keep the data, runs, submissions

Each run is `python train_<arch>.py --data DIR` with nothing but --name, --runs-dir and --no-progress, then
`python predict.py RUN --data DIR --solution DIR/solution.csv --out SUBMISSION`; the test accuracy and the rarest
class's recall are scored here from the submission file against solution.csv. Wall time is both processes'
(start-up, decoding, training, prediction). The baseline runs in this process (its time: reading the images,
training, predicting). --train-args and --baseline-epochs exist for smoke tests of this script only; the
benchmark's figures come without them:

    python bench/recipes.py --quick --train 120 --test 40 --archs cnn --train-args "--epochs 1" --baseline-epochs 1
"""
from __future__ import annotations

import csv
import json
import shlex
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import common  # puts the repository root on sys.path

import baseline
import competitions
from submission import submission_accuracy

# The targets, on 'objects': test accuracy of each script's defaults, within the time (training + prediction).
TARGETS = {"cnn": 0.92, "resnet": 0.90}
TARGET_SECONDS = 600
RECIPE_KEYS = (("img_size", "img"), ("batch_size", "batch"), ("epochs", "epochs"), ("lr", "lr"))


def read_labels(path: Path) -> dict[str, str]:
    """id -> label of a two-column CSV with a header (train.csv, solution.csv, a labels submission)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return {r[0].strip(): r[1].strip() for r in rows if r}


def rarest_class(root: Path) -> str:
    """The class with the fewest training images."""
    counts = Counter(read_labels(root / "train.csv").values())
    return min(sorted(counts), key=counts.__getitem__)


def class_recall(submission: Path, solution: Path, label: str) -> float | None:
    """The share of the test images of `label` that the submission labels so (None: the test set has none)."""
    predicted, truth = read_labels(submission), read_labels(solution)
    ids = [i for i, v in truth.items() if v == label]
    return sum(predicted.get(i) == label for i in ids) / len(ids) if ids else None


def run_script(arch: str, root: Path, work: Path, kind: str, train_args: list[str]) -> dict:
    """train_<arch>.py on its defaults, then predict.py; the scores, the wall time and the recipe it chose."""
    runs_dir, name = work / "runs", f"{kind}-{arch}"
    shutil.rmtree(runs_dir / name, ignore_errors=True)
    cmd = [f"train_{arch}.py", "--data", root, "--name", name, "--runs-dir", runs_dir, "--no-progress", *train_args]
    trained = common.run_python(cmd, echo=True, on_line=lambda line: print("   ", line.rstrip(), flush=True))
    result = {"method": f"train_{arch}.py defaults", "arch": arch, "seconds": trained.seconds}
    if trained.returncode != 0:
        print(trained.output[-3000:])
        return {**result, "failed": f"train_{arch}.py exit {trained.returncode}"}
    run_dir, out = runs_dir / name, work / f"{name}-submission.csv"
    predicted = common.run_python(["predict.py", run_dir, "--data", root, "--solution", root / "solution.csv",
                                   "--out", out, "--no-progress"], echo=True)
    result["seconds"] += predicted.seconds
    if predicted.returncode != 0:
        print(predicted.output[-3000:])
        return {**result, "failed": f"predict.py exit {predicted.returncode}"}
    config = json.loads((run_dir / "config.json").read_text())
    info = json.loads((run_dir / "run.json").read_text())
    return {**result, "accuracy": submission_accuracy(out, root / "solution.csv"),
            "rare_recall": class_recall(out, root / "solution.csv", rarest_class(root)),
            "config": {k: config.get(k) for k, _ in RECIPE_KEYS}, "recipe": info.get("recipe") or {},
            "train_s": info.get("train_time")}


def run_baseline(root: Path, epochs: int) -> dict:
    """bench/baseline.py's plain network, in this process (it returns its accuracy only: no rare-class recall)."""
    print(f"$ baseline.run({str(root)!r}, epochs={epochs})", flush=True)
    result = baseline.run(root, epochs=epochs)
    return {"method": "plain PyTorch baseline", "arch": "baseline", "accuracy": result["accuracy"],
            "seconds": result["seconds"], "rare_recall": None,
            "config": {"img_size": 32, "batch_size": 64, "epochs": epochs, "lr": 2e-3}, "recipe": {}}


def recipe_cells(r: dict) -> list[str]:
    """The image size, batch, epochs and lr the run used; * marks those chosen for the data (run.json's recipe)."""
    config = r.get("config") or {}
    cells = []
    for key, _ in RECIPE_KEYS:
        value = config.get(key)
        text = "" if value is None else (f"{value:g}" if key == "lr" else str(value))
        cells.append(text + ("*" if key in r.get("recipe", {}) else ""))
    return cells


def row(kind: str, r: dict) -> list[str]:
    if "failed" in r:
        return [kind, r["method"], r["failed"], "", f"{r['seconds']:.0f}", "", "", "", ""]
    recall = "n/a" if r["rare_recall"] is None else f"{r['rare_recall']:.3f}"
    return [kind, r["method"], f"{r['accuracy']:.4f}", recall, f"{r['seconds']:.0f}", *recipe_cells(r)]


def add_targets(report: common.Report, results: dict):
    """On 'objects': each script's test accuracy, and its wall time, against the issue's targets."""
    for r in results.get("objects", []):
        wanted = TARGETS.get(r["arch"])
        if wanted is None:
            continue
        failed = r.get("failed", "")
        report.target(f"objects: {r['method']} test accuracy", None if failed else 100 * r["accuracy"],
                      100 * wanted, unit="%", note=failed or f"in {r['seconds']:.0f} s")
        report.target(f"objects: {r['method']} wall time (training + prediction)", None if failed else r["seconds"],
                      TARGET_SECONDS, unit=" s", higher_is_better=False, note=failed)


def describe_competition(kind: str, root: Path) -> str:
    """How many images it holds (class_counts rounds each class's share, so not exactly --train/--test), and of the
    rarest class."""
    rare, train, test = rarest_class(root), read_labels(root / "train.csv"), read_labels(root / "solution.csv")
    n_rare, n_rare_test = (sum(v == rare for v in labels.values()) for labels in (train, test))
    return (f"{kind}: {len(train)} training / {len(test)} test images; rarest class {rare!r} "
            f"({n_rare} training, {n_rare_test} test images)")


def parse_args(argv=None):
    parser = common.build_parser(__doc__)  # its --data (the demo) is not used: the competitions are generated
    parser.add_argument("--kinds", default=None,
                        help=f"comma-separated competitions (default {','.join(competitions.KINDS)}; quick: objects)")
    parser.add_argument("--archs", default=None, help="comma-separated architectures (default cnn,resnet)")
    parser.add_argument("--train", type=int, default=None, help="training images (default 1800; quick 600)")
    parser.add_argument("--test", type=int, default=None, help="test images (default 500; quick 200)")
    parser.add_argument("--work", type=Path, default=None,
                        help="write the competitions, runs and submissions here and keep them (default: a "
                             "temporary folder, removed at the end)")
    parser.add_argument("--train-args", default="",
                        help="more flags for the train scripts, in one string: for smoke tests of this script only "
                             "(the benchmark measures the defaults)")
    parser.add_argument("--baseline-epochs", type=int, default=15, help="the baseline's epochs (smoke tests only)")
    args = parser.parse_args(argv)
    args.arch_list = common.archs(parser, args.archs, "cnn,resnet")
    kinds = [k.strip() for k in (args.kinds or ("objects" if args.quick else ",".join(competitions.KINDS))).split(",")
             if k.strip()]
    unknown = sorted(set(kinds) - set(competitions.KINDS))
    if unknown:
        parser.error(f"unknown competition(s) {unknown}; known: {', '.join(competitions.KINDS)}")
    args.kind_list = kinds
    args.train = args.train or (600 if args.quick else 1800)
    args.test = args.test or (200 if args.quick else 500)
    return args


def measure(args, work: Path, report: common.Report) -> dict:
    """Every competition: written, then each script and the baseline trained and scored on it."""
    results = {}
    for kind in args.kind_list:
        root = work / kind
        shutil.rmtree(root, ignore_errors=True)
        print(f"writing the {kind!r} competition: {args.train} training / {args.test} test images -> {root}",
              flush=True)
        competitions.write_competition(kind, root, args.train, args.test)
        report.note(describe_competition(kind, root))
        results[kind] = [run_script(arch, root, work, kind, shlex.split(args.train_args)) for arch in args.arch_list]
        results[kind].append(run_baseline(root, args.baseline_epochs))
        for r in results[kind]:
            print(f"{kind}: {r['method']}: " + (r.get("failed") or f"test accuracy {r['accuracy']:.4f}")
                  + f" in {r['seconds']:.0f} s", flush=True)
    return results


def main(argv=None):
    args = parse_args(argv)
    report = common.Report("Recipes: each script's defaults on generated competitions", args)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        results = measure(args, args.work, report)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-recipes-") as tmp:
            results = measure(args, Path(tmp), report)
    report.table(
        "Test accuracy of each train script with its defaults, and of the plain baseline (* chosen for the data)",
        ["competition", "method", "test acc", "rarest-class recall", "wall s (train + predict)",
         *[label for _, label in RECIPE_KEYS]],
        [row(kind, r) for kind, rs in results.items() for r in rs])
    add_targets(report, results)
    for kind, rs in results.items():
        for r in rs:
            if r.get("recipe"):
                report.note(f"{kind}, {r['method']}: " + "; ".join(f"{k}: {v}" for k, v in r["recipe"].items()))
    report.note("the baseline (bench/baseline.py): seven 3x3 convs, AdamW one-cycle, flips, 32 px, batch 64; its "
                "time excludes process start-up, and it reports no rare-class recall (it returns its accuracy only)")
    if args.train_args or args.baseline_epochs != 15:
        report.note(f"smoke test: --train-args {args.train_args!r} --baseline-epochs {args.baseline_epochs}; "
                    "not the benchmark's figures, which come from each script's defaults alone")
    report.finish()
    return report


if __name__ == "__main__":
    main()
