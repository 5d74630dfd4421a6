"""Generated competitions unlike the demo, for the recipes benchmark (bench/recipes.py) and for trying defaults by
hand. Each is written in the Kaggle layout: `train.csv` (image_id,category), `train_images/`, `test_images/`,
`sample_submission.csv` and the answers in `solution.csv`.

- objects: 64 px colour JPEGs of six kinds of shapes placed at random (position, size, rotation, colour) on
  textured backgrounds, one class ten times rarer than the others;
- centred: 28 px grayscale PNGs of six centred, upright silhouettes with varying size and stroke (the kind of
  data Fashion-MNIST is);
- textures: 48 px colour PNGs whose class is a texture (stripes at an angle, checks, dots, waves, noise, grid)
  with random scale, colour and orientation, and no object at all.

    python bench/competitions.py objects /tmp/objects          # write one
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import cv2
import numpy as np

KINDS = ("objects", "centred", "textures")
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")


def _colour(rng, lo=0, hi=256) -> tuple:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _background(size: int, rng) -> np.ndarray:
    """A textured background: a colour gradient, blotches of low-frequency noise, and a few lines."""
    base = np.array(_colour(rng, 40, 220), np.float32)
    other = np.array(_colour(rng, 40, 220), np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    img = base * (1 - t) + other * t
    img = np.repeat(img, size, axis=0) if img.shape[0] == 1 else img
    blotch = cv2.resize(rng.normal(0, 40, (6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img = img + blotch + rng.normal(0, 12, (size, size, 3)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), _colour(rng), int(rng.integers(1, 3)))
    return img


def _polygon(kind: str, centre, radius: float, angle: float) -> list[np.ndarray]:
    cx, cy = centre
    if kind == "square":
        pts = [(radius, math.radians(a)) for a in (45, 135, 225, 315)]
    elif kind == "triangle":
        pts = [(radius, math.radians(a)) for a in (90, 210, 330)]
    elif kind == "star":
        pts = [(radius if i % 2 == 0 else radius * 0.42, math.radians(90 + 36 * i)) for i in range(10)]
    else:  # cross: a plus sign of two bars
        w = radius * 0.35
        pts = [(math.hypot(x, y), math.atan2(y, x)) for x, y in
               [(w, radius), (w, w), (radius, w), (radius, -w), (w, -w), (w, -radius), (-w, -radius), (-w, -w),
                (-radius, -w), (-radius, w), (-w, w), (-w, radius)]]
    return [np.array([[cx + r * math.cos(a + angle), cy - r * math.sin(a + angle)] for r, a in pts],
                     np.int32).reshape(-1, 1, 2)]


def draw_shape(img: np.ndarray, kind: str, centre, radius: float, angle: float, colour, thickness: int = -1):
    """Draw one shape (filled when thickness is -1) on img in place."""
    c = tuple(int(v) for v in centre)
    if kind == "circle":
        cv2.circle(img, c, int(radius), colour, thickness, cv2.LINE_AA)
    elif kind == "ring":
        cv2.circle(img, c, int(radius), colour, max(2, int(radius * 0.3)), cv2.LINE_AA)
    elif thickness < 0:
        cv2.fillPoly(img, _polygon(kind, centre, radius, angle), colour, cv2.LINE_AA)
    else:
        cv2.polylines(img, _polygon(kind, centre, radius, angle), True, colour, thickness, cv2.LINE_AA)


def object_image(label: int, rng, size: int = 64) -> np.ndarray:
    img = _background(size, rng)
    radius = float(rng.uniform(0.12, 0.3) * size)
    centre = rng.uniform(radius, size - radius, 2)
    colour = _colour(rng)
    draw_shape(img, SHAPES[label], centre, radius, float(rng.uniform(0, 2 * math.pi)), colour)
    return img


def centred_image(label: int, rng, size: int = 28) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    radius = float(rng.uniform(0.3, 0.45) * size)
    centre = size / 2 + rng.normal(0, 0.6, 2)
    grey = int(rng.integers(120, 256))
    thickness = -1 if rng.random() < 0.6 else int(rng.integers(1, 3))
    draw_shape(img, SHAPES[label], centre, radius, float(rng.normal(0, 0.08)), (grey, grey, grey), thickness)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    noise = rng.normal(0, 10, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)[:, :, 0]


def texture_image(label: int, rng, size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = float(rng.uniform(0, math.pi)), float(rng.uniform(5, 12))
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    phase = float(rng.uniform(0, 2 * math.pi))
    if label == 0:  # stripes
        field = np.sin(2 * math.pi * u / period + phase) > 0
    elif label == 1:  # checks
        field = (np.sin(2 * math.pi * u / period + phase) * np.sin(2 * math.pi * v / period)) > 0
    elif label == 2:  # dots
        field = (np.sin(2 * math.pi * u / period + phase) * np.sin(2 * math.pi * v / period)) > 0.55
    elif label == 3:  # waves
        field = np.sin(2 * math.pi * (u + 3 * np.sin(2 * math.pi * v / (period * 2.5))) / period + phase) > 0
    elif label == 4:  # blotchy noise
        field = cv2.resize(rng.normal(0, 1, (int(size / period) + 2,) * 2).astype(np.float32), (size, size),
                           interpolation=cv2.INTER_CUBIC) > 0
    else:  # grid of thin lines
        field = (np.abs(np.sin(math.pi * u / period + phase)) < 0.25) | (np.abs(np.sin(math.pi * v / period)) < 0.25)
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    while np.abs(a - b).sum() < 150:
        b = np.array(_colour(rng), np.float32)
    img = np.where(field[..., None], a, b) + rng.normal(0, 15, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


DRAW = {"objects": (object_image, ".jpg"), "centred": (centred_image, ".png"), "textures": (texture_image, ".png")}


def class_counts(n_train: int, classes: int, rare: int | None) -> list[int]:
    """Images per class: equal, except class `rare` with a tenth of the others'."""
    weights = [0.1 if k == rare else 1.0 for k in range(classes)]
    return [max(2, round(n_train * w / sum(weights))) for w in weights]


def write_competition(kind: str, root: Path, n_train: int = 1800, n_test: int = 500, seed: int = 0,
                      rare: int | None = 5) -> Path:
    """Write the competition `kind` into root (Kaggle layout, answers in solution.csv). The test images follow
    the training images' class proportions."""
    draw, ext = DRAW[kind]
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", n_train), ("test", n_test)):
        counts = class_counts(n, len(SHAPES), rare)
        labels = rng.permutation(np.repeat(np.arange(len(SHAPES)), counts))
        folder = root / f"{split}_images"
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, label in enumerate(labels):
            image_id = f"{split[:2]}{i:05d}"
            cv2.imwrite(str(folder / f"{image_id}{ext}"), draw(int(label), rng))
            rows.append((image_id, SHAPES[label] if kind != "textures" else f"texture_{label}"))
        name = "train.csv" if split == "train" else "solution.csv"
        _write_csv(root / name, ["image_id", "category"], rows)
        if split == "test":
            _write_csv(root / "sample_submission.csv", ["image_id", "category"], [(r[0], rows[0][1]) for r in rows])
    return root


def _write_csv(path: Path, header: list[str], rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=1800, help="training images")
    parser.add_argument("--test", type=int, default=500, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_competition(args.kind, Path(args.out), args.train, args.test, args.seed))


if __name__ == "__main__":
    main()
