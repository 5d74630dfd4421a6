"""Finding a dataset's images and labels: a labels CSV (`train.csv`, `labels.csv`, ...) with an image folder
(`train/`, `train_images/`, `images/`), or class folders (`train/<class name>/<image>`); a label column of class
names or of space-separated tags (multi-label), or one-hot label columns; the one CSV reader, and matching a
CSV's ids to image files. Only names and paths here: pixels are read by `decode.py`."""
from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from errors import DataError

log = logging.getLogger("imgcomp")

IMG_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Looked for in this order; the first one there is used.
LABEL_FILES = ("train.csv", "labels.csv", "train_labels.csv", "train_v2.csv")
TRAIN_DIRS = ("train", "train_images", "images")
TEST_DIRS = ("test", "test_images")
ID_COLUMNS = ("id", "image", "image_id", "filename", "file", "path", "file_name", "image_name", "img", "id_code",
              "imageid", "img_id", "img_name", "image_path", "image_file", "filepath", "file_path", "fname")
LABEL_COLUMNS = ("label", "class", "target", "category", "labels", "class_name", "tags", "tag", "breed", "diagnosis",
                 "level", "species", "grade", "y", "class_id", "category_id", "label_id", "landmark_id",
                 "attribute_ids", "cultivar", "disease")
# Label columns whose values with spaces are tag lists whatever their counts.
TAG_COLUMNS = ("tags", "tag", "attribute_ids")
# The values of one-hot label columns.
ONE_HOT_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


def natural_key(text: str):
    """Sort key that puts "img2" before "img10" and "2" before "10". Names equal but for letter case or leading
    zeros ("Cat" and "cat", "01" and "1") are then ordered by their text: the order never depends on the order
    they were found in (a set's, which changes from process to process)."""
    text = str(text)
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text)] + \
        [(2, 0, text)]


def listing(items, limit=10) -> str:
    items = [str(i) for i in items]
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {shown}{more}"


@dataclass
class LabelledImages:
    """Training images of a dataset folder: files, their labels and the class names the labels index.
    Single-label: `labels` is (N,) int64 class indices; multi-label: (N, C) uint8 multi-hot, one column per class
    (tag). `summary`: one line saying what was found (which files and columns, single- or multi-label and why);
    `notes`: what was ignored or left out."""
    files: list[Path]
    labels: np.ndarray
    class_names: list[str]
    layout: str
    notes: list[str] = field(default_factory=list)
    multi_label: bool = False
    summary: str = ""
    labels_file: Path | None = None
    image_dir: Path | None = None
    # Each image's id as the competition's files name it: the labels CSV's id column as written there (named
    # `id_column`); class folders: the file's path relative to the training folder.
    ids: list[str] = field(default_factory=list)
    id_column: str = "file"
    # Labels that look like mistakes, trained as they are (`doubtful_labels`): for the log's warnings.
    warnings: list[str] = field(default_factory=list)


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


def _pick_column(header: list[str], wanted: str | None, candidates, what: str, option: str, csv_path: Path,
                 exclude: str | None = None) -> str:
    """The column `wanted` (the value of the setting `option`), else the first of `candidates` in `header` other
    than `exclude` (the column the other role took)."""
    if wanted is not None:
        if wanted not in header:
            raise DataError(f"{csv_path}: {wanted!r} is not a column; the columns are {header}", option=option,
                            fix=f"name the {what} column")
        return wanted
    found = _present(header, candidates, exclude)
    if found:
        return found[0]
    raise DataError(f"{csv_path}: no {what} column found among {header}; expected one of {list(candidates)}",
                    option=option, fix="or name it")


def _present(header: list[str], candidates, exclude: str | None = None) -> list[str]:
    """The columns of `header` named as one of `candidates` (in any letter case), in the candidates' order."""
    lower = {h.strip().lower(): h for h in header}
    return [lower[name] for name in candidates if name in lower and lower[name] != exclude]


def _repeats(table: CsvTable, column: str) -> bool:
    """Whether some value of `column` is on two rows (ids are unique; a label's values repeat)."""
    values = [value.strip() for value in table.column(column)]
    return len(set(values)) < len(values)


def find_labelled_images(root: str | Path, id_col: str | None = None, label_col: str | None = None,
                         labels_file: str | Path | None = None, train_dir: str | Path | None = None,
                         multi_label: bool | None = None) -> LabelledImages:
    """Find the training images of `root` and their labels, the layout detected: a labels CSV (`labels_file`,
    else the first of LABEL_FILES) with its images in `train_dir` (else the first of TRAIN_DIRS), or, without a
    labels CSV, class folders `train/<class name>/<image>`. `multi_label`: None detects it (a label column of
    space-separated tag lists, or one-hot columns with other than exactly one 1 per row), True/False decides."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    notes: list[str] = []
    csv_path = _labels_csv(root, labels_file, notes)
    if csv_path is not None:
        found = _read_train_csv(root, csv_path, train_dir, id_col, label_col, multi_label, notes)
    else:
        found = _read_class_folders(root, train_dir, multi_label, notes)
    if len(found.class_names) < 2:
        raise DataError(f"{root}: found {len(found.class_names)} class(es) {found.class_names}; a classifier needs "
                        "at least two")
    counts = found.labels.sum(axis=0) if found.multi_label else np.bincount(found.labels,
                                                                           minlength=len(found.class_names))
    found.warnings = doubtful_labels(found.class_names, [int(n) for n in counts], found.multi_label)
    return found


def _in_root(root: Path, given: str | Path) -> Path:
    """A path a setting names: inside `root` when it is there, else as given (from the working folder)."""
    path = Path(given)
    if not path.is_absolute() and (root / path).exists():
        return root / path
    return path


def _shown(path: Path, root: Path) -> str:
    """A found file or folder for the log: relative to the dataset folder when inside it."""
    try:
        text = path.relative_to(root).as_posix()
    except ValueError:
        text = str(path)
    return text + "/" if path.is_dir() else text


def _labels_csv(root: Path, labels_file, notes: list[str]) -> Path | None:
    """The labels CSV: `labels_file`, else the first of LABEL_FILES in `root` (None: there is none)."""
    if labels_file:
        path = _in_root(root, labels_file)
        if not path.is_file():
            raise DataError(f"labels file {labels_file} not found (neither in {root} nor from the working folder)",
                            option="labels", fix="give an existing file")
        return path
    there = [root / name for name in LABEL_FILES if (root / name).is_file()]
    if len(there) > 1:
        notes.append(f"{root} holds several labels files: {there[0].name} is used, not "
                     f"{', '.join(p.name for p in there[1:])}")
    return there[0] if there else None


def _only_folder(root: Path, prefix: str) -> Path | None:
    """The one folder of `root` whose name begins with `prefix` (e.g. train-jpg/), if there is exactly one."""
    folders = [d for d in root.iterdir() if d.is_dir() and d.name.lower().startswith(prefix)]
    return folders[0] if len(folders) == 1 else None


def _named_folder(root: Path, train_dir) -> Path:
    folder = _in_root(root, train_dir)
    if not folder.is_dir():
        raise DataError(f"image folder {train_dir} not found (neither in {root} nor from the working folder)",
                        option="train_dir", fix="give an existing folder")
    return folder


def _train_folder(root: Path, train_dir, csv_path: Path) -> Path:
    """The folder of the labels CSV's images: `train_dir`, else the first of TRAIN_DIRS, else the only train*
    folder."""
    if train_dir:
        return _named_folder(root, train_dir)
    folder = next((root / d for d in TRAIN_DIRS if (root / d).is_dir()), None) or _only_folder(root, "train")
    if folder is None:
        expected = ", ".join(str(root / d) for d in TRAIN_DIRS[:-1]) + f" or {root / TRAIN_DIRS[-1]}"
        raise DataError(f"{csv_path} found but no image folder: expected {expected}", option="train_dir",
                        fix="or name it")
    return folder


def _read_class_folders(root: Path, train_dir, multi_label: bool | None, notes: list[str]) -> LabelledImages:
    """The layout without a labels CSV: one folder per class (`train/<class name>/<image>`)."""
    folder = _named_folder(root, train_dir) if train_dir else next(
        (root / d for d in TRAIN_DIRS if (root / d).is_dir()), None)
    no_csv = f"{root} has no train.csv (nor {', '.join(LABEL_FILES[1:])})"
    if folder is None:
        raise DataError(f"{root} has neither train.csv nor a train/ folder of class folders (looked for "
                        f"{', '.join(LABEL_FILES)} and {', '.join(d + '/' for d in TRAIN_DIRS)})")
    class_dirs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if not class_dirs:
        raise DataError(f"{folder} has no class folders (expected {folder.name}/<class name>/<image>) and {no_csv}")
    loose = [p for p in folder.iterdir() if p.is_file()]
    if loose:
        notes.append(f"ignored {len(loose)} file(s) directly in {folder} (not in a class folder)")
    files, names, ids = [], [], []
    for class_dir in class_dirs:
        found = _scan_images(class_dir, notes)
        if not found:
            raise DataError(f"class folder {class_dir} holds no images "
                            f"(extensions: {' '.join(sorted(IMG_EXTENSIONS))})")
        files += [path for _, path in found]
        ids += [f"{class_dir.name}/{rel}" for rel, _ in found]
        names += [class_dir.name] * len(found)
    class_names, labels = _class_indices(names)
    order = sorted(range(len(files)), key=lambda i: (labels[i], natural_key(files[i].name)))  # whatever the listing
    files, labels, ids = [files[i] for i in order], labels[order], [ids[i] for i in order]
    kind = f"single-label ({len(class_names)} classes)"
    if multi_label:  # as asked: each image's one class as its only tag
        labels = np.eye(len(class_names), dtype=np.uint8)[labels]
        kind = f"multi-label, as asked ({len(class_names)} classes, one per image)"
    summary = f"labels: the class folders of {_shown(folder, root)}: {kind}"
    return LabelledImages(files, labels, class_names, "folder", notes, bool(multi_label), summary, None, folder,
                          ids=ids)


# Labels a table holds where a value is missing (pandas writes NaN, R NA): rarely a class.
MISSING_LABELS = {"nan", "none", "null", "na", "n/a", "<na>"}


def _label_key(name: str) -> str:
    """What two labels that mean the same class share: letter case, spaces and a number's writing aside
    ("Cat" and " cat", "01" and "1", "1.0" and "1")."""
    key = " ".join(name.split()).casefold()
    try:
        number = Decimal(key)
    except InvalidOperation:
        return key
    return str(number.normalize()) if number.is_finite() else key


def doubtful_labels(class_names: list[str], counts: list[int], multi_label: bool) -> list[str]:
    """Warnings about class names (tags) that are likely mistakes, which train as classes of their own: names
    that differ only in letter case, spaces or leading zeros, and names that stand for a missing value ('NaN')."""
    what = "tags" if multi_label else "labels"
    groups: dict[str, list[str]] = {}
    for name in class_names:
        groups.setdefault(_label_key(name), []).append(name)
    alike = [" and ".join(map(repr, names)) for names in groups.values() if len(names) > 1]
    warnings = []
    if alike:
        warnings.append(f"{what} that look like the same class: {'; '.join(alike[:10])}"
                        f"{f'; ... ({len(alike)} groups)' if len(alike) > 10 else ''} -- they are trained as "
                        "different classes (correct the labels file if they are one)")
    for name, count in zip(class_names, counts):
        if name.strip().casefold() in MISSING_LABELS:
            warnings.append(f"{count} {'image has' if count == 1 else 'images have'} the {what[:-1]} {name!r}, "
                            "which is how a missing value is written: it is trained as a class of its own")
    return warnings


def _class_indices(names: list[str]) -> tuple[list[str], np.ndarray]:
    """The class names (natural order) and each name's index among them."""
    class_names = sorted(set(names), key=natural_key)
    index = {name: i for i, name in enumerate(class_names)}
    return class_names, np.array([index[n] for n in names], dtype=np.int64)


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


def match_ids(ids: list[str], lines: list[int], index: FileIndex, source: Path, complete: bool = False,
              missing_ok: bool = False) -> list[Path]:
    """The image of each id (stripped) of the CSV `source`, in order. One error lists every duplicate id (or
    two ids naming one file), the next every id without an image (pointing at an image of that name in a
    subfolder, where there is one); with `complete`, also an error listing the images of the folder that no id
    names. An empty id, or one pointing outside the folder, is an error naming its line. With `missing_ok`, an
    id without an image is None in the list instead."""
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
            missing.append((line, ident))
        elif path in seen_paths:  # e.g. "a" and "a.png": one image named twice
            duplicates.append(f"line {line}: {ident!r} (same file as line {seen_paths[path]})")
        else:
            seen_paths[path] = line
        files.append(path)
    if duplicates:
        raise DataError(f"{source}: {len(duplicates)} duplicate id(s):{listing(duplicates)}")
    if missing and not missing_ok:
        raise DataError(f"{source}: {len(missing)} id(s) have no image in {index.folder} (file not found):"
                        f"{listing(_in_subfolders(missing, index))}")
    if complete:
        unnamed = sorted(set(index.files) - set(files), key=lambda p: natural_key(str(p)))
        if unnamed:
            raise DataError(f"{len(unnamed)} image(s) in {index.folder} are missing from {source}:{listing(unnamed)}")
    return files


def _in_subfolders(missing: list[tuple[int, str]], index: FileIndex) -> list[str]:
    """Each (line, id) of `missing` as "line N: 'id'", pointing at an image of that name in a subfolder of the
    index's folder where there is one: an id names its image's path from the folder."""
    names = {os.path.basename(ident) for _, ident in missing}
    found: dict[str, Path] = {}
    for path in index.files:
        for key in (path.name, path.stem):
            if key in names and path.parent != index.folder:
                found.setdefault(key, path)
    out = []
    for line, ident in missing:
        where, folder = found.get(os.path.basename(ident)), index.folder.name
        if where is None:
            out.append(f"line {line}: {ident!r}")
            continue
        rel = where.relative_to(index.folder).as_posix()
        if os.path.splitext(ident)[1].lower() not in IMG_EXTENSIONS:  # the id as written: without its extension
            rel = os.path.splitext(rel)[0]
        out.append(f"line {line}: {ident!r} (there is {where}, in a subfolder of {folder}/: an id names its image's "
                   f"path from {folder}/, here {rel!r})")
    return out


def _read_train_csv(root: Path, csv_path: Path, train_dir, id_col, label_col, multi_label,
                    notes: list[str]) -> LabelledImages:
    """The layout of a labels CSV: an id column, and a label column (class names or tag lists) or one-hot
    label columns; the images in the train folder."""
    table = read_csv(csv_path)
    id_col, label_cols, why = _columns(table, id_col, label_col, notes)
    image_dir = _train_folder(root, train_dir, csv_path)
    if not table.rows:
        raise DataError(f"{csv_path}: no rows")
    ids = table.column(id_col)
    if len(label_cols) == 1:
        labels, class_names, multi, kind = _labels_of_column(table, label_cols[0], ids, multi_label)
        columns = f"{id_col} -> {label_cols[0]}{why}"
    else:
        labels, class_names, multi, kind = _labels_of_one_hot(table, label_cols, ids, multi_label, notes)
        columns = f"{id_col} -> one-hot columns {', '.join(label_cols)}"
    index = FileIndex(image_dir, notes)
    files = match_ids(ids, table.lines, index, csv_path)
    unused = len(index.files) - len(files)
    if unused > 0:
        notes.append(f"{unused} image(s) in {image_dir} are not listed in {csv_path.name} and are not used")
    summary = f"labels: {_shown(csv_path, root)} ({columns}), images in {_shown(image_dir, root)}: {kind}"
    return LabelledImages(files, labels, class_names, "csv", notes, multi, summary, csv_path, image_dir,
                          ids=list(ids), id_column=id_col)


def _columns(table: CsvTable, id_col: str | None, label_col: str | None,
             notes: list[str]) -> tuple[str, list[str], str]:
    """(the id column, the label columns, why the label column was taken when no name said so): an id is never a
    label, so each role's column is left out of the other's candidates."""
    if id_col is not None and id_col == label_col:
        raise DataError(f"{table.path}: {id_col!r} is named as both the id column and the label column; an "
                        "image's id cannot be its label", option="label_col", fix="name another label column")
    if id_col is not None:
        id_col = _pick_column(table.header, id_col, ID_COLUMNS, "id", "id_col", table.path)
    else:
        id_col = _id_column(table, label_col, notes)
    return (id_col, *_label_columns(table, id_col, label_col))


def _id_column(table: CsvTable, label_col: str | None, notes: list[str]) -> str:
    """The first column named as ids are (not `label_col`) whose values are unique, else the first so named (its
    duplicates are reported with their lines)."""
    named = _present(table.header, ID_COLUMNS, label_col)
    if not named:
        return _pick_column(table.header, None, ID_COLUMNS, "id", "id_col", table.path, label_col)
    unique = [name for name in named if not _repeats(table, name)]
    if unique and unique[0] != named[0]:
        skipped = ", ".join(name for name in named if name not in unique)
        notes.append(f"{table.path.name}: the ids are taken from {unique[0]}, whose values are unique, not from "
                     f"{skipped}, whose values repeat")
    return unique[0] if unique else named[0]


def _label_columns(table: CsvTable, id_col: str, label_col: str | None) -> tuple[list[str], str]:
    """([the label column] (named, or the first of LABEL_COLUMNS), else the one-hot label columns: every other
    column, when there are two or more and they hold only 0 and 1; else the one other column when its values
    repeat) and, for that last, why it was taken."""
    try:
        return [_pick_column(table.header, label_col, LABEL_COLUMNS, "label", "label_col", table.path, id_col)], ""
    except DataError:
        others = [h for h in table.header if h != id_col]
        if label_col is not None:
            raise
        if len(others) == 1 and _repeats(table, others[0]):
            return others, ": the one column besides the ids, its values repeat"
        if len(others) < 2 or not all(v.strip() in ONE_HOT_VALUES for name in others for v in table.column(name)):
            raise
        return others, ""


def _labels_of_column(table: CsvTable, column: str, ids: list[str], multi_label: bool | None):
    """(labels, class names, multi-label, what was found) of a label column: class names, or space-separated
    tag lists (multi-label: detected, or as `multi_label` says)."""
    values = [value.strip() for value in table.column(column)]
    multi, kind = _tag_lists(values, column, multi_label)
    for ident, value, line in zip(ids, values, table.lines):  # the first faulty row, in file order
        ident = _check_id(ident, f"{table.path} line {line}")
        if not value:
            raise DataError(f"{table.path} line {line}: empty {'tag list' if multi else 'label'} for id {ident!r}")
    if not multi:
        class_names, labels = _class_indices(values)
        return labels, class_names, False, kind
    tag_lists = [value.split() for value in values]
    class_names = sorted({tag for tags in tag_lists for tag in tags}, key=natural_key)
    return _multi_hot(tag_lists, class_names), class_names, True, kind


def _tag_lists(values: list[str], column: str, multi_label: bool | None) -> tuple[bool, str]:
    """Whether a label column holds tag lists, and why: as asked, or detected when some value holds two or more
    words and there are fewer distinct words than distinct values (class names with spaces have more), or the
    column is named as tags are."""
    distinct = set(values) - {""}
    words = {word for value in distinct for word in value.split()}
    spaced = any(len(value.split()) > 1 for value in distinct)
    lists = spaced and (len(words) < len(distinct) or column.strip().lower() in TAG_COLUMNS)
    multi = lists if multi_label is None else multi_label
    if multi:
        combinations = len({frozenset(value.split()) for value in distinct})
        counted = f"{len(words)} tags in {combinations} combinations"
        if multi_label:
            return True, f"multi-label, as asked ({counted})"
        return True, f"multi-label (the {column} column holds space-separated lists: {counted})"
    if multi_label is False:
        return False, f"single-label, as asked ({len(distinct)} classes)"
    if spaced:
        return False, (f"single-label ({len(distinct)} classes; the spaces are part of their names: "
                       f"{len(words)} words in {len(distinct)} names)")
    return False, f"single-label ({len(distinct)} classes)"


def _multi_hot(tag_lists: list[list[str]], class_names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.zeros((len(tag_lists), len(class_names)), dtype=np.uint8)
    for row, tags in enumerate(tag_lists):
        labels[row, [index[tag] for tag in tags]] = 1
    return labels


def _labels_of_one_hot(table: CsvTable, columns: list[str], ids: list[str], multi_label: bool | None,
                       notes: list[str]):
    """(labels, class names, multi-label, what was found) of one-hot label columns: the columns are the classes
    (natural order); single-label when every row has exactly one 1 (or as `multi_label` says)."""
    class_names = sorted(columns, key=natural_key)
    where = [table.header.index(name) for name in class_names]
    matrix = np.array([[ONE_HOT_VALUES[row[i].strip()] for i in where] for row in table.rows], dtype=np.uint8)
    ones = matrix.sum(axis=1)
    multi = bool((ones != 1).any()) if multi_label is None else multi_label
    faulty = ones == 0 if multi else ones != 1
    for ident, bad, count, line in zip(ids, faulty, ones, table.lines):  # the first faulty row, in file order
        ident = _check_id(ident, f"{table.path} line {line}")
        if bad and count == 0:
            raise DataError(f"{table.path} line {line}: no label column is 1 for id {ident!r} (an empty tag list)")
        if bad:
            raise DataError(f"{table.path} line {line}: {count} label columns are 1 for id {ident!r}; single-label "
                            "data has exactly one")
    never = [name for name, n in zip(class_names, matrix.sum(axis=0)) if n == 0]
    if never:
        notes.append(f"{table.path.name}: no image has the class(es) {', '.join(never)}")
    if not multi:
        kind = "single-label, as asked" if multi_label is False else "single-label (each row has exactly one 1)"
        return matrix.argmax(axis=1).astype(np.int64), class_names, False, kind
    combinations = len(np.unique(matrix, axis=0))
    counted = f"{len(class_names)} classes in {combinations} combinations"
    kind = f"multi-label, as asked ({counted})" if multi_label else f"multi-label (some rows have several 1s: {counted})"
    return matrix, class_names, True, kind


def find_test_folder(root: str | Path, test_dir: str | Path | None = None) -> Path:
    """The folder of the test images: `test_dir`, else the first of TEST_DIRS in `root`, else its only test*
    folder."""
    root = Path(root)
    if test_dir:
        folder = _in_root(root, test_dir)
        if not folder.is_dir():
            raise DataError(f"no test folder: {test_dir} does not exist (neither in {root} nor from the working "
                            "folder)", option="test_dir", fix="give an existing folder")
        return folder
    folder = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    folder = folder or (_only_folder(root, "test") if root.is_dir() else None)
    if folder is None:
        raise DataError(f"no test folder: {root / TEST_DIRS[0]} does not exist (nor {root / TEST_DIRS[1]})",
                        option="test_dir", fix="or name it")
    return folder


def index_test_images(root: str | Path, test_dir: str | Path | None = None) -> FileIndex:
    """The unlabelled images of the test folder (`find_test_folder`), natural order in `.files`, indexed by id."""
    folder = find_test_folder(root, test_dir)
    notes: list[str] = []
    index = FileIndex(folder, notes)
    for note in notes:
        log.info(note)
    if not index.files:
        raise DataError(f"{folder} holds no images")
    return index


def find_test_images(root: str | Path, test_dir: str | Path | None = None) -> list[Path]:
    """The unlabelled images of the test folder, in natural order."""
    return index_test_images(root, test_dir).files


def label_text(labels_row, class_names: list[str], multi_label: bool) -> str:
    """One image's label as written in CSVs: its class name, or its tags joined by one space."""
    if multi_label:
        return " ".join(class_names[i] for i in np.flatnonzero(labels_row))
    return class_names[int(labels_row)]


def parse_labels(texts: list[str], class_names: list[str], multi_label: bool, where: str | Path,
                 lines: list[int] | None = None) -> np.ndarray:
    """Labels read back from the CSV `where` (as `label_text` writes them; `lines`: each text's line, by default
    the rows after a header): class names -> (N,) int64 indices, or space-separated tags -> (N, C) uint8
    multi-hot. An unknown name or an empty tag list is an error naming the line."""
    lines = lines if lines is not None else range(2, len(texts) + 2)
    index = {name: i for i, name in enumerate(class_names)}
    known = f"the classes are {_some(class_names)}"
    if not multi_label:
        out = np.empty(len(texts), dtype=np.int64)
        for k, (text, line) in enumerate(zip(texts, lines)):
            name = text.strip()
            if name not in index:
                raise DataError(f"{where} line {line}: " + (f"{name!r} is not a class; {known}" if name else
                                                             "empty label"))
            out[k] = index[name]
        return out
    out = np.zeros((len(texts), len(class_names)), dtype=np.uint8)
    for k, (text, line) in enumerate(zip(texts, lines)):
        tags = text.split()
        if not tags:
            raise DataError(f"{where} line {line}: empty tag list")
        unknown = [tag for tag in tags if tag not in index]
        if unknown:
            raise DataError(f"{where} line {line}: {', '.join(map(repr, unknown))} "
                            f"{'is not a class' if len(unknown) == 1 else 'are not classes'}; {known}")
        out[k, [index[tag] for tag in tags]] = 1
    return out


def _some(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
