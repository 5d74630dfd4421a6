"""Finding a dataset's images: the two layouts (`train.csv` + `train/`, or `train/<class name>/<image>`), the
one CSV reader, and matching a CSV's ids to image files. Only names and paths here: pixels are read by
`decode.py`."""
from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from errors import DataError

log = logging.getLogger("imgcomp")

IMG_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
ID_COLUMNS = ("id", "image", "image_id", "filename", "file", "path", "file_name", "image_name", "img")
LABEL_COLUMNS = ("label", "class", "target", "category", "labels", "class_name")


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


def _pick_column(header: list[str], wanted: str | None, candidates, what: str, option: str, csv_path: Path) -> str:
    """The column `wanted` (the value of the setting `option`), else the first of `candidates` in `header`."""
    if wanted is not None:
        if wanted not in header:
            raise DataError(f"{csv_path}: {wanted!r} is not a column; the columns are {header}", option=option,
                            fix=f"name the {what} column")
        return wanted
    lower = {h.strip().lower(): h for h in header}
    for name in candidates:
        if name in lower:
            return lower[name]
    raise DataError(f"{csv_path}: no {what} column found among {header}; expected one of {list(candidates)}",
                    option=option, fix="or name it")


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
    id_col = _pick_column(table.header, id_col, ID_COLUMNS, "id", "id_col", csv_path)
    label_col = _pick_column(table.header, label_col, LABEL_COLUMNS, "label", "label_col", csv_path)
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
