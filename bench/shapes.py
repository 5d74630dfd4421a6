"""Competition shapes: the demo's images rebuilt as three competitions of other shapes, each trained by the CNN
script with nothing but the shape's own flags, its submission written by predict.py as the sample asks, and
scored here from the submission file alone (reading only the sample's format) with scikit-learn:

- probs (dog-breed style): `labels.csv` id,breed; the sample is id + one probability column per class, in
  shuffled order; scored by multi-class log loss;
- score (melanoma style): `train.csv` image_name,target of 0/1 (an upper-body garment or not); the sample
  image_name,target; scored by ROC AUC;
- tags (planet style): 56 px images of a 2x2 grid, each cell empty or a garment; `train_v2.csv` image_name,tags
  (the garments present, space-separated); scored by the mean F2 per image.

    python bench/shapes.py --epochs 3                    # every shape, 12,000 training images each
    python bench/shapes.py --quick --shapes tags         # one shape, fewer images
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

import common

UPPER_BODY = {0, 2, 4, 6}  # T-shirt/top, Pullover, Coat, Shirt
SHAPES = ("probs", "score", "tags")


def _write_images(folder: Path, names: list[str], images: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images):
        cv2.imwrite(str(folder / f"{name}.png"), image)


def _write_csv(path: Path, header: list[str], rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def make_probs(root: Path, arrays, classes: list[str], rng) -> dict:
    (xtr, ytr), (xte, yte) = arrays
    breeds = [c.lower().replace("/", "_").replace("-", "_").replace(" ", "_") for c in classes]
    train_ids, test_ids = [f"{i:06x}" for i in range(len(xtr))], [f"t{i:06x}" for i in range(len(xte))]
    _write_images(root / "train", train_ids, xtr)
    _write_images(root / "test", test_ids, xte)
    _write_csv(root / "labels.csv", ["id", "breed"], [(i, breeds[y]) for i, y in zip(train_ids, ytr)])
    columns = list(rng.permutation(breeds))
    _write_csv(root / "sample_submission.csv", ["id", *columns],
               [(i, *[f"{1 / len(columns):.4f}"] * len(columns)) for i in test_ids])
    _write_csv(root / "solution.csv", ["id", "breed"], [(i, breeds[y]) for i, y in zip(test_ids, yte)])
    return {"flags": ["--metric", "log_loss"], "metric": "log_loss"}


def make_score(root: Path, arrays, classes: list[str], rng) -> dict:
    (xtr, ytr), (xte, yte) = arrays
    target = lambda y: int(int(y) in UPPER_BODY)  # noqa: E731
    train_ids, test_ids = [f"ISIC_{i:07d}" for i in range(len(xtr))], [f"ISIC_{9000000 + i}" for i in range(len(xte))]
    _write_images(root / "train", train_ids, xtr)
    _write_images(root / "test", test_ids, xte)
    _write_csv(root / "train.csv", ["image_name", "target"], [(i, target(y)) for i, y in zip(train_ids, ytr)])
    _write_csv(root / "sample_submission.csv", ["image_name", "target"], [(i, 0) for i in test_ids])
    _write_csv(root / "solution.csv", ["image_name", "target"], [(i, target(y)) for i, y in zip(test_ids, yte)])
    return {"flags": ["--metric", "roc_auc"], "metric": "roc_auc"}


def _grid_images(x: np.ndarray, y: np.ndarray, n: int, rng) -> tuple[np.ndarray, list[set[int]]]:
    """n 56 px images, each a 2x2 grid of cells that hold a random garment with probability 0.5 (at least one)."""
    out, tags = np.zeros((n, 56, 56), np.uint8), []
    for k in range(n):
        cells = rng.random(4) < 0.5
        cells[rng.integers(4)] = True
        present = set()
        for c in np.flatnonzero(cells):
            j = rng.integers(len(x))
            out[k, 28 * (c // 2):28 * (c // 2) + 28, 28 * (c % 2):28 * (c % 2) + 28] = x[j]
            present.add(int(y[j]))
        tags.append(present)
    return out, tags


def make_tags(root: Path, arrays, classes: list[str], rng) -> dict:
    (xtr, ytr), (xte, yte) = arrays
    names = [c.lower().replace("/", "_").replace("-", "_").replace(" ", "_") for c in classes]
    text = lambda tags: " ".join(names[t] for t in sorted(tags))  # noqa: E731
    gtr, ttr = _grid_images(xtr, ytr, len(xtr), rng)
    gte, tte = _grid_images(xte, yte, len(xte), rng)
    train_ids, test_ids = [f"train_{i}" for i in range(len(gtr))], [f"test_{i}" for i in range(len(gte))]
    _write_images(root / "train-jpg", train_ids, gtr)
    _write_images(root / "test-jpg", test_ids, gte)
    _write_csv(root / "train_v2.csv", ["image_name", "tags"], [(i, text(t)) for i, t in zip(train_ids, ttr)])
    _write_csv(root / "sample_submission.csv", ["image_name", "tags"], [(i, names[0]) for i in test_ids])
    _write_csv(root / "solution.csv", ["image_name", "tags"], [(i, text(t)) for i, t in zip(test_ids, tte)])
    return {"flags": ["--metric", "f2_samples", "--train-dir", root / "train-jpg"], "metric": "f2_samples",
            "predict_flags": ["--test-dir", root / "test-jpg"]}


def read_rows(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], {r[0]: r[1:] for r in rows[1:]}


def score_submission(shape: str, root: Path, submission: Path) -> float:
    """The competition's score of `submission`, reading only the sample's format: as a Kaggle scorer would."""
    from sklearn.metrics import fbeta_score, log_loss, roc_auc_score
    from sklearn.preprocessing import MultiLabelBinarizer
    sample_header, sample = read_rows(root / "sample_submission.csv")
    header, rows = read_rows(submission)
    _, solution = read_rows(root / "solution.csv")
    if header != sample_header or set(rows) != set(sample):
        raise SystemExit(f"{submission}: not in the sample's format (header {header[:4]}..., {len(rows)} rows)")
    ids = list(sample)
    if shape == "probs":
        order = sorted(range(len(header) - 1), key=lambda c: header[1 + c])  # scikit-learn's label order
        probs = np.array([[float(rows[i][c]) for c in order] for i in ids])
        truth = [solution[i][0] for i in ids]
        return float(log_loss(truth, probs / probs.sum(1, keepdims=True), labels=[header[1 + c] for c in order]))
    if shape == "score":
        return float(roc_auc_score([int(solution[i][0]) for i in ids], [float(rows[i][0]) for i in ids]))
    binarizer = MultiLabelBinarizer().fit([solution[i][0].split() for i in ids] + [rows[i][0].split() for i in ids])
    truth = binarizer.transform([solution[i][0].split() for i in ids])
    predicted = binarizer.transform([rows[i][0].split() for i in ids])
    return float(fbeta_score(truth, predicted, beta=2, average="samples", zero_division=0))


def run_shape(shape: str, work: Path, arrays, classes, epochs: int) -> dict:
    root = work / shape
    if root.exists():
        shutil.rmtree(root)
    made = {"probs": make_probs, "score": make_score, "tags": make_tags}[shape](root, arrays, classes,
                                                                              np.random.default_rng(0))
    runs = work / "runs"
    shutil.rmtree(runs / shape, ignore_errors=True)
    train = ["train_cnn.py", "--data", root, "--epochs", epochs, "--runs-dir", runs, "--name", shape,
             "--no-progress", *made["flags"]]
    start = time.perf_counter()
    common.check(common.run_python(train, echo=True), f"train_cnn.py ({shape})")
    trained = time.perf_counter() - start
    out = work / f"{shape}-submission.csv"
    common.check(common.run_python(["predict.py", runs / shape, "--data", root, "--out", out,
                                    *made.get("predict_flags", [])], echo=True), f"predict.py ({shape})")
    return {"shape": shape, "metric": made["metric"], "score": score_submission(shape, root, out),
            "seconds": trained, "command": " ".join(str(a) for a in train)}


def main():
    parser = common.build_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgcomp-shapes"))
    args = parser.parse_args()
    from demo import FASHION_MNIST_CLASSES, fashion_mnist_arrays
    xtr, ytr, xte, yte = fashion_mnist_arrays(None)  # train images, labels, test images, labels
    n = 2000 if args.quick else args.train_images
    arrays = ((xtr[:n], ytr[:n]), (xte[:n // 4], yte[:n // 4]))
    results = [run_shape(s.strip(), args.work, arrays, FASHION_MNIST_CLASSES, args.epochs)
               for s in args.shapes.split(",") if s.strip()]
    for r in results:
        print(f"{r['shape']}: {r['metric']} {r['score']:.4f} ({r['seconds']:.0f} s to train: {r['command']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": common.machine_line(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
