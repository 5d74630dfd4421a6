"""Tiny generated datasets shared by the tests. Each class draws a bright bar at its own place, so a
model can learn them in an epoch or two."""
from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The user's cache folder (remembered compute formats, the fallback image cache) is the tests' own: nothing is
# read from or left in the real one. Subprocesses inherit it.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="imgcomp-tests-cache-")


def class_image(label: int, n_classes: int, size: int, rng: np.random.Generator, channels: int = 1,
                dtype=np.uint8) -> np.ndarray:
    """A noisy image whose class shows as a horizontal bar at a class-specific height."""
    img = rng.integers(0, 60, (size, size), dtype=np.int32)
    band = max(1, size // (n_classes + 1))
    top = (label + 1) * size // (n_classes + 1) - band // 2
    img[top:top + band, :] += 180
    img = np.clip(img, 0, 255).astype(np.uint8)
    if channels == 3:  # BGR on disk, as OpenCV writes it
        img = np.stack([img // 2, img, 255 - img], axis=2)
    elif channels == 4:
        img = np.stack([img // 2, img, 255 - img, np.full_like(img, 255)], axis=2)
    if dtype == np.uint16:
        img = img.astype(np.uint16) * 257
    return img


def write_dataset(root: Path, layout: str = "csv", classes=("cat", "dog", "bird"), per_class: int = 20,
                  size: int = 16, channels: int = 1, ext: str = ".png", n_test: int = 12, seed: int = 0,
                  sample_ids_with_ext: bool = False) -> Path:
    """Write a competition folder: train (csv or folder layout), test/, sample_submission.csv and the
    answers in solution.csv. Returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    rows = []
    for k, name in enumerate(classes):
        for i in range(per_class):
            ident = f"{k}_{i}"
            if layout == "csv":
                path = root / "train" / f"{ident}{ext}"
            else:
                path = root / "train" / name / f"{ident}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), class_image(k, len(classes), size, rng, channels))
            rows.append((ident, name))
    if layout == "csv":
        write_csv(root / "train.csv", ["id", "label"], rows)
    (root / "test").mkdir(parents=True, exist_ok=True)
    answers = []
    for i in range(n_test):
        k = i % len(classes)
        ident = f"t{i}"
        assert cv2.imwrite(str(root / "test" / f"{ident}{ext}"), class_image(k, len(classes), size, rng, channels))
        answers.append((ident + ext if sample_ids_with_ext else ident, classes[k]))
    write_csv(root / "sample_submission.csv", ["id", "label"], [(i, classes[0]) for i, _ in answers])
    write_csv(root / "solution.csv", ["id", "label"], answers)
    return root


def write_csv(path: Path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def csv_dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "comp", layout="csv")


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "comp", layout="folder", channels=3, ext=".jpg")


def to_version_1(ckpt: dict) -> dict:
    """A checkpoint of the current format written as version 1 of the format did (spec fields at the top
    level, "mode", the resumable state beside the weights), to check that old checkpoints still load."""
    spec = ckpt["spec"]
    old = {"format": ckpt["format"], "version": 1, "arch": spec["arch"],
           "model_args": {"num_classes": len(spec["class_names"]), "in_chans": spec["channels"],
                          "img_size": spec["img_size"]},
           "class_names": spec["class_names"], "img_size": spec["img_size"], "channels": spec["channels"],
           "normalize": spec["mean"] is not None,
           "mean": spec["mean"] if spec["mean"] is not None else [0.0] * spec["channels"],
           "std": spec["std"] if spec["std"] is not None else [1.0] * spec["channels"],
           "mode": dict(spec["compute"]), "config": ckpt["config"], "model": ckpt["model"],
           **{k: ckpt[k] for k in ("epoch", "history", "best_val_acc", "best_epoch", "train_time", "val_files")}}
    old.update(ckpt.get("training", {}))
    return old


def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(folder: Path, monkeypatch):
    """`folder` made read-only, as competition notebooks mount their inputs: a read-only bind mount of it over
    itself when this process may mount (root, as in CI), else its write bits removed (enforced for a non-root
    user), else (root without mount) simulated: decode.py is told it cannot write there. Yields how."""
    folder = Path(folder)
    if _mount("--bind", str(folder), str(folder)):
        try:
            if not _mount("-o", "remount,bind,ro", str(folder)):
                raise RuntimeError(f"could not remount {folder} read-only")
            yield "read-only bind mount"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    if os.geteuid() == 0:
        import decode  # where cache_dir_for looks it up
        real = decode.is_writable
        monkeypatch.setattr(decode, "is_writable", lambda p: not Path(p).resolve().is_relative_to(folder.resolve())
                            and real(p))
        yield "simulated (no mount, root)"
        return
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        yield "write bits removed"
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` (e.g. "2m") mounted on `folder`: a disk that fills up. Yields None where this process
    may not mount (the caller then simulates the full disk)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        yield None
        return
    try:
        yield folder
    finally:  # lazily: a file the test still holds open (an exception's traceback) must not fail it
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def run_predict(*argv) -> None:
    """predict.py's main with `argv` (stringified), without its progress bars."""
    import predict
    predict.main([str(a) for a in argv] + ["--no-progress"])


def predict_error(*argv) -> str:
    """The `error: ...` that predict.py exits with for `argv`."""
    with pytest.raises(SystemExit) as exc:
        run_predict(*argv)
    assert isinstance(exc.value.code, str) and exc.value.code.startswith("error: "), exc.value.code
    return exc.value.code
