"""Every pixel of the toolkit and every dataset file: finding images, reading the dataset's CSVs and matching
their ids to files, decoding images once into a cached array, the one batch path (`batches` + `Preprocess`),
augmentation and normalisation. Training, prediction and the benchmarks all read images through this module.

    python data.py fashion-mnist data/fashion-mnist   # write the demo competition
    python data.py info DIR                            # show what a dataset folder holds
"""
from __future__ import annotations

import argparse
import csv
import errno
import gzip
import hashlib
import json
import logging
import math
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from errors import DataError, UsageError, explain
from fileio import atomic_write_text

log = logging.getLogger("imgcomp")

IMG_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
ID_COLUMNS = ("id", "image", "image_id", "filename", "file", "path", "file_name", "image_name", "img")
LABEL_COLUMNS = ("label", "class", "target", "category", "labels", "class_name")
CACHE_VERSION = 1


def natural_key(text: str):
    """Sort key that puts "img2" before "img10" and "2" before "10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", str(text))]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def listing(items, limit=10) -> str:
    items = [str(i) for i in items]
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {shown}{more}"


# ----------------------------------------------------------------------------------------------
# Finding the images of a dataset folder
# ----------------------------------------------------------------------------------------------

@dataclass
class LabelledImages:
    """Training images of a dataset folder: files, integer labels and the class names they index."""
    files: list[Path]
    labels: np.ndarray
    class_names: list[str]
    layout: str
    notes: list[str] = field(default_factory=list)


def _scan_images(folder: Path, notes: list[str]) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every image below `folder`, in natural order; other files are
    noted and ignored. Plain strings, not pathlib, since datasets hold 10^5+ files."""
    found, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # e.g. our own .cache
        rel_dir = os.path.relpath(dirpath, folder).replace(os.sep, "/")
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMG_EXTENSIONS:
                found.append((name if rel_dir == "." else f"{rel_dir}/{name}", dirpath, name))
            else:
                others.append(os.path.join(dirpath, name))
    if others:
        notes.append(f"ignored {len(others)} non-image file(s) in {folder}:{listing(sorted(others), 5)}")
    found.sort(key=lambda item: natural_key(item[0]))
    return [(rel, Path(dirpath, name)) for rel, dirpath, name in found]


def _image_files(folder: Path, notes: list[str]) -> list[Path]:
    return [path for _, path in _scan_images(folder, notes)]


def _pick_column(header: list[str], wanted: str | None, candidates, what: str, flag: str, csv_path: Path) -> str:
    if wanted is not None:
        if wanted not in header:
            raise DataError(f"{csv_path}: {flag} {wanted!r} is not a column; the columns are {header}")
        return wanted
    lower = {h.strip().lower(): h for h in header}
    for name in candidates:
        if name in lower:
            return lower[name]
    raise DataError(f"{csv_path}: no {what} column found among {header}; "
                    f"expected one of {list(candidates)} or name it with {flag}")


def find_labelled_images(root: str | Path, id_col: str | None = None, label_col: str | None = None) -> LabelledImages:
    """Find the training images of `root` in either layout (detected automatically):
    `root/train.csv` + `root/train/` (or `root/images/`), or `root/train/<class name>/<image>`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    notes: list[str] = []
    csv_path = root / "train.csv"
    if csv_path.is_file():
        files, names = _read_train_csv(root, csv_path, id_col, label_col, notes)
        layout = "csv"
    else:
        train_dir = root / "train"
        if not train_dir.is_dir():
            raise DataError(f"{root} has neither train.csv nor a train/ folder of class folders")
        class_dirs = [d for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if not class_dirs:
            raise DataError(f"{train_dir} has no class folders (expected train/<class name>/<image>) "
                            f"and {root} has no train.csv")
        loose = [p for p in train_dir.iterdir() if p.is_file()]
        if loose:
            notes.append(f"ignored {len(loose)} file(s) directly in {train_dir} (not in a class folder)")
        files, names = [], []
        for class_dir in class_dirs:
            found = _image_files(class_dir, notes)
            if not found:
                raise DataError(f"class folder {class_dir} holds no images "
                                f"(extensions: {' '.join(sorted(IMG_EXTENSIONS))})")
            files += found
            names += [class_dir.name] * len(found)
        layout = "folder"
    class_names = sorted(set(names), key=natural_key)
    if len(class_names) < 2:
        raise DataError(f"{root}: found {len(class_names)} class(es) {class_names}; a classifier needs at least two")
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    if layout == "folder":  # a stable order regardless of the file system's listing order
        order = sorted(range(len(files)), key=lambda i: (labels[i], natural_key(files[i].name)))
        files, labels = [files[i] for i in order], labels[order]
    return LabelledImages(files, labels, class_names, layout, notes)


def _check_id(raw: str, where: str) -> str:
    ident = raw.strip()
    if not ident:
        raise DataError(f"{where}: empty id")
    if "\\" not in ident and ".." not in ident and ident[0] != "/" and ident[1:2] != ":":  # most ids: quickly
        return ident
    if os.path.isabs(ident) or ident.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", ident) \
            or ".." in re.split(r"[\\/]", ident):
        raise DataError(f"{where}: id {ident!r} points outside the data folder (absolute path or '..')")
    return ident.replace("\\", "/")


def _id_keys(rel: str) -> list[str]:
    """The ways an id may name the file `rel`: as it is, with its extension in lower case, or without it."""
    stem, ext = os.path.splitext(rel)
    if ext.lower() not in IMG_EXTENSIONS:
        return [rel]
    return [rel, stem + ext.lower(), stem]


class FileIndex:
    """Looks up ids in an image folder: the relative path, with or without its extension, in any letter
    case of the extension."""

    def __init__(self, folder: Path, notes: list[str]):
        self.folder = folder
        scanned = _scan_images(folder, notes) if folder.is_dir() else []
        self.files = [path for _, path in scanned]
        self.by_key: dict[str, Path] = {}
        self.ambiguous: set[str] = set()
        for rel, path in scanned:
            for key in _id_keys(rel):
                if self.by_key.setdefault(key, path) is not path:
                    self.ambiguous.add(key)

    def find(self, ident: str) -> Path | None:
        prefix = self.folder.name + "/"
        for candidate in (ident, ident[len(prefix):] if ident.startswith(prefix) else None):  # "train/abc.png"
            for key in _id_keys(candidate) if candidate else []:
                if key in self.ambiguous:
                    raise DataError(f"id {ident!r} matches several files in {self.folder}; give the extension")
                if key in self.by_key:
                    return self.by_key[key]
        return None


@dataclass
class CsvTable:
    """A CSV file's header and rows (each as long as the header), with each row's line number for messages."""
    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def column(self, name: str) -> list[str]:
        i = self.header.index(name)
        return [row[i] for row in self.rows]


def read_csv(path: str | Path) -> CsvTable:
    """The one CSV reader (train.csv, sample_submission.csv, solution files, submissions read back): UTF-8 with
    or without a BOM, any line ending, blank lines skipped; a clear error for a missing, empty, unreadable
    or ragged file, naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file (no header row)")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path} line {reader.line_num}: {len(row)} column(s), the header has {len(header)}")
                rows.append(row)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    return CsvTable(path, header, rows, lines)


def match_ids(ids: list[str], lines: list[int], index: FileIndex, source: Path, complete: bool = False) -> list[Path]:
    """The image of each id (stripped) of the CSV `source`, in order. One error lists every duplicate id (or
    two ids naming one file), the next every id without an image; with `complete`, also an error listing the
    images of the folder that no id names. An empty id, or one pointing outside the folder, is an error
    naming its line."""
    files, missing, duplicates, seen, seen_paths = [], [], [], {}, {}
    for raw, line in zip(ids, lines):
        ident = _check_id(raw, f"{source} line {line}")
        if ident in seen:
            duplicates.append(f"line {line}: {ident!r} (first on line {seen[ident]})")
            continue
        seen[ident] = line
        # An id is matched as written first: file names may begin or end with spaces.
        path = (index.find(raw) if raw != ident and not raw.isspace() else None) or index.find(ident)
        if path is None:
            missing.append(f"line {line}: {ident!r}")
        elif path in seen_paths:  # e.g. "a" and "a.png": one image named twice
            duplicates.append(f"line {line}: {ident!r} (same file as line {seen_paths[path]})")
        else:
            seen_paths[path] = line
        files.append(path)
    if duplicates:
        raise DataError(f"{source}: {len(duplicates)} duplicate id(s):{listing(duplicates)}")
    if missing:
        raise DataError(f"{source}: {len(missing)} id(s) have no image in {index.folder} (file not found):"
                        f"{listing(missing)}")
    if complete:
        unnamed = sorted(set(index.files) - set(files), key=lambda p: natural_key(str(p)))
        if unnamed:
            raise DataError(f"{len(unnamed)} image(s) in {index.folder} are missing from {source}:{listing(unnamed)}")
    return files


def _read_train_csv(root: Path, csv_path: Path, id_col, label_col, notes) -> tuple[list[Path], list[str]]:
    table = read_csv(csv_path)
    id_col = _pick_column(table.header, id_col, ID_COLUMNS, "id", "--id-col", csv_path)
    label_col = _pick_column(table.header, label_col, LABEL_COLUMNS, "label", "--label-col", csv_path)
    image_dir = next((d for d in (root / "train", root / "images") if d.is_dir()), None)
    if image_dir is None:
        raise DataError(f"{csv_path} found but no image folder: expected {root / 'train'} or {root / 'images'}")
    if not table.rows:
        raise DataError(f"{csv_path}: no rows")
    ids, names = table.column(id_col), [label.strip() for label in table.column(label_col)]
    for ident, label, line in zip(ids, names, table.lines):  # the first faulty row, in file order
        ident = _check_id(ident, f"{csv_path} line {line}")
        if not label:
            raise DataError(f"{csv_path} line {line}: empty label for id {ident!r}")
    index = FileIndex(image_dir, notes)
    files = match_ids(ids, table.lines, index, csv_path)
    unused = len(index.files) - len(files)
    if unused > 0:
        notes.append(f"{unused} image(s) in {image_dir} are not listed in {csv_path.name} and are not used")
    return files, names


def index_test_images(root: str | Path) -> FileIndex:
    """The unlabelled images of `root/test/` (natural order in `.files`), indexed by id."""
    test_dir = Path(root) / "test"
    if not test_dir.is_dir():
        raise DataError(f"no test folder: {test_dir} does not exist")
    notes: list[str] = []
    index = FileIndex(test_dir, notes)
    for note in notes:
        log.info(note)
    if not index.files:
        raise DataError(f"{test_dir} holds no images")
    return index


def find_test_images(root: str | Path) -> list[Path]:
    """The unlabelled images of `root/test/`, in natural order."""
    return index_test_images(root).files


# ----------------------------------------------------------------------------------------------
# Decoding once, into a memory-mapped cache
# ----------------------------------------------------------------------------------------------

def decode_image(path: Path, img_size: int, channels: int | None) -> np.ndarray:
    """One image file as a uint8 array of shape (C, S, S), RGB or gray. The only BGR->RGB conversion
    of the toolkit. `channels` None keeps the file's own (1 for gray, 3 for colour)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(f"broken symbolic link (to {os.readlink(path)})")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ValueError("empty file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("cannot decode (truncated, corrupt or not an image)")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:  # float TIFFs: assume 0..1
        img = (np.clip(img.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 1 and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    elif channels == 3 and img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[0] != img_size or img.shape[1] != img_size:
        shrink = img.shape[0] > img_size or img.shape[1] > img_size
        img = cv2.resize(img, (img_size, img_size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)


@dataclass
class ImageArray:
    """Decoded images: `pixels` is a (N, C, S, S) uint8 array (memory-mapped from the cache);
    `bad` maps the index of each file that could not be read to the reason."""
    pixels: np.ndarray
    files: list[Path]
    bad: dict[int, str]

    @property
    def channels(self) -> int:
        return self.pixels.shape[1]

    def good_indices(self) -> np.ndarray:
        return np.array([i for i in range(len(self.files)) if i not in self.bad], dtype=np.int64)

    def raise_if_bad(self, hint: str = "fix or remove them, or pass --skip-bad to leave them out"):
        if self.bad:
            items = [f"{self.files[i]}: {why}" for i, why in sorted(self.bad.items())]
            raise DataError(f"{len(items)} image file(s) cannot be read:{listing(items)}\n{hint}")


def user_cache_dir() -> Path:
    """The user's cache folder for decoded images: $XDG_CACHE_HOME/imgcomp, else ~/.cache/imgcomp."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgcomp"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            return True
    except OSError:
        return False


def cache_dir_for(root: str | Path, given: str | Path | None = None) -> Path:
    """Where the decoded images of the dataset folder `root` are cached: `given` (--cache-dir), else
    $IMGCOMP_CACHE, else ROOT/.cache; when that cannot be written (a read-only dataset, as competition
    notebooks mount their inputs), the user's cache folder (`user_cache_dir`), with a log line."""
    if given:
        if not _writable(Path(given)):
            raise DataError(f"--cache-dir {given}: cannot write there")
        return Path(given)
    if os.environ.get("IMGCOMP_CACHE"):
        if not _writable(Path(os.environ["IMGCOMP_CACHE"])):
            raise DataError(f"$IMGCOMP_CACHE={os.environ['IMGCOMP_CACHE']}: cannot write there")
        return Path(os.environ["IMGCOMP_CACHE"])
    beside = Path(root) / ".cache"
    if _writable(beside):
        return beside
    fallback = user_cache_dir()
    if not _writable(fallback):
        raise DataError(f"cannot write a cache of decoded images in {beside} nor in {fallback}: "
                        "name a writable folder with --cache-dir or $IMGCOMP_CACHE")
    log.info("%s is not writable: caching decoded images in %s", root, fallback)
    return fallback


def _cache_key(files: list[Path], img_size: int, channels: int | None) -> tuple[str, str]:
    """(key of the file list, key of the files' states). A file's state is its size, modification time,
    inode and status-change time: a file rewritten in place with its old size and modification time put
    back (as cp -p, tar and unzip do) still gets a new status-change time, so it is decoded again."""
    names, full = hashlib.sha256(), hashlib.sha256()
    head = f"v{CACHE_VERSION}|{img_size}|{channels}|"
    names.update(head.encode())
    full.update(head.encode())
    for path in files:
        text = os.path.abspath(path)
        try:
            st = os.stat(path)
            state = f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}"
        except OSError as e:  # e.g. a broken symbolic link: decoding reports it as a bad image
            state = f"unreadable {e.errno}"
        names.update(text.encode() + b"\0")
        full.update(f"{text}\0{state}\0".encode())
    return names.hexdigest()[:12], full.hexdigest()[:12]


def load_images(files: list[Path], img_size: int, channels: int | None = None, cache_dir: str | Path | None = None,
                workers: int | None = None, progress: bool = True, desc: str = "decoding") -> ImageArray:
    """Decode `files` once into a (N, C, S, S) uint8 array cached on disk, and memory-map it.

    The cache is keyed by the file paths and states (`_cache_key`), the image size and the channel request,
    so a changed file decodes again. `channels` None: 1 if every image is gray, else 3. `cache_dir` None:
    `cache_dir_for` the folder that holds all the files."""
    if not files:
        raise DataError("no image files to load")
    if cache_dir is None:
        cache_dir = cache_dir_for(os.path.commonpath([os.path.abspath(f.parent) for f in files]))
    cache_dir = Path(cache_dir)
    names_key, full_key = _cache_key(files, img_size, channels)
    stem = cache_dir / f"images-{img_size}px-{names_key}-{full_key}"
    meta_path, npy_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    if meta_path.is_file() and npy_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            pixels = np.load(npy_path, mmap_mode="r")
            if pixels.shape[0] == len(files):
                return ImageArray(pixels, files, {int(k): v for k, v in meta["bad"].items()})
        except (ValueError, KeyError, OSError):
            pass  # a damaged cache is rebuilt below
    cache_dir.mkdir(parents=True, exist_ok=True)
    pixels, bad = _decode_all(files, img_size, channels, cache_dir, workers, progress, desc)
    # The array is complete before its metadata exists, and both appear by atomic renames.
    tmp_npy = pixels.filename
    pixels.flush()
    del pixels
    os.replace(tmp_npy, npy_path)
    atomic_write_text(meta_path, json.dumps({"files": len(files), "img_size": img_size, "bad": bad}))
    for old in cache_dir.glob(f"images-{img_size}px-{names_key}-*"):  # superseded versions of this file list
        if old.stem != stem.name:
            old.unlink(missing_ok=True)
    return ImageArray(np.load(npy_path, mmap_mode="r"), files, {int(k): v for k, v in bad.items()})


def reserve_space(path: str | Path, size: int, what: str):
    """Allocate `size` bytes of `path` on its disk now, so that a full disk is a clear error here rather
    than a crash (SIGBUS) when a memory-mapped page is first written."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
            raise DataError(f"no space left on the device of {os.path.dirname(os.path.abspath(path))} for {what} "
                            f"(needs {size / 2**20:,.0f} MB, {free / 2**20:,.0f} MB free): free some space, or put "
                            "the cache elsewhere with --cache-dir or $IMGCOMP_CACHE") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate: written as used
            raise
    finally:
        os.close(fd)


def _decode_all(files, img_size, channels, cache_dir, workers, progress, desc):
    n = len(files)
    workers = workers or min(8, os.cpu_count() or 1)

    def new_array(c):
        fd, name = tempfile.mkstemp(dir=cache_dir, suffix=".npy.tmp")
        os.close(fd)
        try:
            array = np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=(n, c, img_size, img_size))
            reserve_space(name, os.path.getsize(name), f"the cache of {n} decoded images")
            return array
        except BaseException:
            os.unlink(name)
            raise

    def decode(chunk):
        out = []
        for i in chunk:
            try:
                out.append((i, decode_image(files[i], img_size, channels), None))
            except Exception as e:  # noqa: BLE001 - every failure is reported with its file
                out.append((i, None, str(e)))
        return out

    pixels = new_array(channels or 1)
    bad: dict[str, str] = {}
    # Chunks of images per task: one task per image cost more in scheduling than the decoding itself.
    chunks = [range(s, min(n, s + 256)) for s in range(0, n, 256)]
    try:
        with ThreadPoolExecutor(workers) as pool, tqdm(total=n, desc=desc, unit="img", disable=not progress,
                                                       leave=False) as bar:
            for start in range(0, len(chunks), workers * 2):  # bounded look-ahead
                for results in pool.map(decode, chunks[start:start + workers * 2]):
                    bar.update(len(results))
                    for i, img, err in results:
                        if err is not None:
                            bad[str(i)] = err
                            continue
                        if img.shape[0] == 3 and pixels.shape[1] == 1:  # first colour image: the dataset becomes RGB
                            wider = new_array(3)
                            step = images_per_chunk(wider)
                            for s in range(0, i, step):
                                wider[s:min(i, s + step)] = pixels[s:min(i, s + step)]
                            os.unlink(pixels.filename)
                            pixels = wider
                        elif pixels.shape[1] == 3 and img.shape[0] == 1:
                            img = np.repeat(img, 3, axis=0)
                        pixels[i] = img
    except BaseException:
        os.unlink(pixels.filename)
        raise
    return pixels, bad


# ----------------------------------------------------------------------------------------------
# Splits, statistics, batches and augmentation
# ----------------------------------------------------------------------------------------------

def stratified_split(labels: np.ndarray, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) holding out `val_split` of each class; the same for the same seed."""
    if not 0 <= val_split < 1:
        raise DataError(f"--val-split must be in [0, 1), got {val_split}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_split))
        if val_split > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)  # every class in both parts when it can be
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def images_per_chunk(pixels, budget_bytes: int = 64 * 2**20) -> int:
    """How many images of `pixels` fit in `budget_bytes` as uint8: work on the cache goes chunk by chunk, so
    memory stays bounded at any image size (never a float copy of the dataset)."""
    return max(1, budget_bytes // max(1, int(np.prod(pixels.shape[1:]))))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each image: every class spread evenly over the folds; the same for the same seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, folds])
    fold_of = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        fold_of[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)  # the next class starts where this one ended: the folds' sizes differ by one at most
    return fold_of


def channel_stats(pixels: np.ndarray, indices: np.ndarray, chunk: int | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in 0..1 units) of the images `indices`, summed exactly (integers) chunk by chunk."""
    c = pixels.shape[1]
    chunk = chunk or images_per_chunk(pixels)
    total, total_sq, count = np.zeros(c, np.int64), np.zeros(c, np.int64), 0
    for s in range(0, len(indices), chunk):
        batch = pixels[np.sort(indices[s:s + chunk])]
        total += batch.sum(axis=(0, 2, 3), dtype=np.int64)
        total_sq += [np.square(batch[:, k], dtype=np.uint16).sum(dtype=np.int64) for k in range(c)]  # 255^2 fits
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    total, total_sq = total / 255.0, total_sq / 255.0 ** 2
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0)) + 1e-6
    return [float(m) for m in mean], [float(s) for s in std]


def batches(pixels: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, batch_size: int,
            device: torch.device, shuffle: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool = False,
            start_step: int = 0, stop_step: int | None = None, rank: int = 0, world_size: int = 1,
            balance: bool = False):
    """The one batch path of training, evaluation, prediction and the benchmarks: (uint8 images, labels)
    on `device`, gathered from the cached array by index on a background thread while the current batch is
    used (`iterate_batches` + `prefetch`); images resident on the GPU (`resident`) are gathered there, in
    order, with no thread: a gather there is one more kernel queued. With `labels` None each batch's second
    item is its indices. `Preprocess` then turns the images into the model's input."""
    batches = iterate_batches(pixels, labels, indices, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                              drop_last=drop_last, start_step=start_step, stop_step=stop_step, rank=rank,
                              world_size=world_size, balance=balance)
    if isinstance(pixels, torch.Tensor) and pixels.is_cuda:
        return batches
    return prefetch(batches, device)


def iterate_batches(pixels: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, batch_size: int,
                    shuffle: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool = False,
                    start_step: int = 0, stop_step: int | None = None, rank: int = 0, world_size: int = 1,
                    balance: bool = False):
    """Yield (uint8 images, labels) batches gathered from the cached array by index, steps
    `start_step` up to `stop_step` (default: the whole epoch). With `balance` (and `shuffle`), an epoch draws
    as many images as `indices` holds, with replacement, each class equally often on average.

    The order of an epoch depends only on (seed, epoch), so a resumed run sees the same batches. Each of
    `world_size` processes takes its share of every batch."""
    indices = np.asarray(indices)
    if shuffle and balance:
        counts = np.bincount(labels[indices])
        weights = 1.0 / counts[labels[indices]]
        indices = np.random.default_rng([seed, epoch]).choice(indices, size=len(indices), p=weights / weights.sum())
    elif shuffle:
        indices = np.random.default_rng([seed, epoch]).permutation(indices)
    n_steps = count_batches(len(indices), batch_size, drop_last)
    on_device = isinstance(pixels, torch.Tensor)
    if on_device and labels is not None:  # resident images (`resident`): their labels beside them
        labels = torch.from_numpy(labels).to(pixels.device)
    for step in range(start_step, n_steps if stop_step is None else min(stop_step, n_steps)):
        idx = np.sort(indices[step * batch_size:(step + 1) * batch_size][rank::world_size])
        if on_device:  # gathered where the images are; the indices go there from pinned memory, without waiting
            where = torch.from_numpy(idx)
            where = where.pin_memory().to(pixels.device, non_blocking=True) if pixels.is_cuda else where
            yield pixels[where], labels[where] if labels is not None else where
        else:
            x = torch.from_numpy(np.ascontiguousarray(pixels[idx]))
            yield x, torch.from_numpy(labels[idx]) if labels is not None else torch.from_numpy(idx)


def resident(pixels: np.ndarray, device: torch.device, share: float = 0.5) -> np.ndarray | torch.Tensor:
    """The images kept on `device` when it is a GPU with room for them (at most `share` of its free memory):
    batches are then gathered there by index, with no copy from the host each step. Elsewhere, or when they do
    not fit, the memory-mapped array itself (batches gathered on the host and prefetched)."""
    if device.type != "cuda":
        return pixels
    free, _ = torch.cuda.mem_get_info(device)
    if pixels.nbytes > share * free:
        log.info("the images (%.1f GB) do not fit in %.0f%% of the GPU's free memory (%.1f GB): batches come from "
                 "the host", pixels.nbytes / 1e9, 100 * share, free / 1e9)
        return pixels
    out = torch.empty(tuple(pixels.shape), dtype=torch.uint8, device=device)
    step = images_per_chunk(pixels)
    for s in range(0, len(pixels), step):  # chunk by chunk: never a second whole copy on the host
        out[s:s + step].copy_(torch.from_numpy(np.ascontiguousarray(pixels[s:s + step])))
    return out


def count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of `n` images (the one place that counts them)."""
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


def prefetch(batches, device: torch.device, depth: int = 2):
    """Gather the next batches on a background thread and move them to `device` while the current one
    trains."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()
    pin = device.type == "cuda"

    def work():
        try:
            for x, y in batches:
                if stop.is_set():
                    return
                if pin:  # pinned host memory copies to the GPU asynchronously; resident images are there already
                    x, y = (x if x.is_cuda else x.pin_memory()), y.pin_memory()
                q.put((x, y))
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            x, y = item
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


@dataclass
class Augment:
    """Batch augmentation on the training device: random horizontal flip, rotation, translation and random
    erasing (Zhong et al., https://arxiv.org/abs/1708.04896), each drawn per image."""
    hflip: bool = True
    rotate: float = 0.0  # maximum angle in degrees, either way
    translate: int = 0  # maximum shift in whole pixels, either way (the edge fills with black)
    erase: float = 0.0  # probability of erasing one random rectangle of an image with noise

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: float images in 0..1, (B, C, H, W)."""
        b, _, h, w = x.shape
        if self.hflip:
            flip = torch.rand(b, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.rotate > 0 or self.translate > 0:
            angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(self.rotate)
            cos, sin = torch.cos(angle), torch.sin(angle)
            # Whole-pixel shifts, in affine_grid's -1..1 coordinates, so a shift alone moves pixels exactly.
            shift = torch.randint(-self.translate, self.translate + 1, (2, b), device=x.device).float()
            tx, ty = shift[0] * 2 / w, shift[1] * 2 / h
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.erase > 0:
            x = self._erase(x)
        return x

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """One rectangle per chosen image, 2-40% of its area, aspect ratio 0.3-3.3, filled with uniform noise."""
        b, _, h, w = x.shape
        dev = x.device
        area = torch.empty(b, device=dev).uniform_(0.02, 0.4) * h * w
        ratio = torch.exp(torch.empty(b, device=dev).uniform_(math.log(0.3), math.log(1 / 0.3)))
        eh = torch.sqrt(area * ratio).round().clamp(1, h)
        ew = torch.sqrt(area / ratio).round().clamp(1, w)
        y0 = (torch.rand(b, device=dev) * (h - eh + 1)).floor()
        x0 = (torch.rand(b, device=dev) * (w - ew + 1)).floor()
        rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_y = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])
        in_x = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
        chosen = torch.rand(b, device=dev) < self.erase
        mask = in_y[:, :, None] & in_x[:, None, :] & chosen[:, None, None]
        return torch.where(mask[:, None], torch.rand_like(x), x)


@dataclass
class Mix:
    """MixUp (Zhang et al., https://arxiv.org/abs/1710.09412) and CutMix (Yun et al.,
    https://arxiv.org/abs/1905.04899) on whole batches on the device: each batch is blended with itself in
    reverse order, by a weight lam ~ Beta(alpha, alpha) (MixUp: the pixels; CutMix: a box of area 1 - lam
    pasted), and the targets become the same blend of the two one-hot labels. With both alphas set, each
    batch takes one of the two at random."""
    mixup: float = 0.0  # alpha of MixUp's Beta distribution (0: off)
    cutmix: float = 0.0  # alpha of CutMix's (0: off)

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets (B, classes), the label that weighs most in each image's target)."""
        # Drawn on the CPU: a decision read back from the GPU would wait for it every step.
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or bool(torch.rand(()) < 0.5))
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other = x.flip(0)
        if use_cutmix:
            h, w = x.shape[2:]
            cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box as clipped at the border
        else:
            x = x * lam + other * (1 - lam)
        one_hot = F.one_hot(y, num_classes).to(x.dtype)
        targets = one_hot * lam + one_hot.flip(0) * (1 - lam)
        return x, targets, y if lam >= 0.5 else y.flip(0)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def tta_views(x: torch.Tensor, hflip: bool) -> list[torch.Tensor]:
    """Test-time views of a batch: itself, and its mirror image when the model was trained with flips
    (a view it never saw would only add noise)."""
    return [x, x.flip(3)] if hflip else [x]


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Float images in 0..1 to zero-mean unit-std per channel (mean/std: sequences, or tensors on x's device)."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@dataclass
class Preprocess:
    """uint8 images on the device -> the model's input: 0..1 floats, augmented (when training and given an
    `augment`), normalised with (mean, std) when given, in the model's memory format. Training, evaluation
    and prediction all go through here."""
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: Augment | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    _stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = to_float(x)
        if train and self.augment is not None:
            x = self.augment(x)
        if self.mean is not None:
            x = normalize(x, *self._on(x.device))
        return x.contiguous(memory_format=self.memory_format)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as tensors on `device`, made once: copying them there every batch would make the host
        wait for a GPU each time."""
        if device not in self._stats:
            self._stats[device] = (torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device))
        return self._stats[device]


# ----------------------------------------------------------------------------------------------
# The demo competition
# ----------------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_mnist_arrays(source: Path | None):
    source = source or FASHION_MNIST_DIR
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    if all((source / n).is_file() for n in names):
        return tuple(_read_idx(source / n) for n in names)
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
    x_train, y_train, x_test, y_test = _fashion_mnist_arrays(source)
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


def describe(root: str | Path, id_col=None, label_col=None) -> str:
    found = find_labelled_images(root, id_col, label_col)
    counts = np.bincount(found.labels, minlength=len(found.class_names))
    lines = [f"{root}: {found.layout} layout, {len(found.files)} training images, {len(found.class_names)} classes"]
    lines += [f"  {name!r}: {n}" for name, n in zip(found.class_names, counts)]
    lines += found.notes
    try:
        lines.append(f"test images: {len(find_test_images(root))}")
    except DataError as e:
        lines.append(str(e))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("fashion-mnist", help="write the Fashion-MNIST demo competition to DIR")
    demo.add_argument("dir")
    demo.add_argument("--source", type=Path, default=None, help=f"folder of the idx .gz files (default {FASHION_MNIST_DIR})")
    demo.add_argument("--limit", type=int, default=None, help="keep only the first N images of each split")
    info = sub.add_parser("info", help="show what a dataset folder holds")
    info.add_argument("dir")
    info.add_argument("--id-col")
    info.add_argument("--label-col")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fashion-mnist":
            write_fashion_mnist(args.dir, args.source, args.limit)
        else:
            print(describe(args.dir, args.id_col, args.label_col))
    except DataError as e:
        sys.exit(f"error: {explain(e)}")


if __name__ == "__main__":
    main()
