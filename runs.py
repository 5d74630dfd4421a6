"""Run bookkeeping and every figure: metrics.csv, curves.png, the probability CSVs (val_predictions.csv, the
out-of-fold file, predict.py --probs), run.json, the runs table (runs/runs.md, and between the README's markers),
the command that trains a run again, and predict.py's evaluation figures (confusion_matrix.png, wrong.png).
Bookkeeping never stops a training run: what cannot be read is flagged, what cannot be written is warned about.

    python runs.py table --runs-dir runs [--commands] [--into README.md]    # the runs table as Markdown
    python runs.py plot runs/NAME                                            # redraw a run's curves.png
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: run.json's writers go unlocked
    fcntl = None

import numpy as np

import cli
from config import NOT_IN_COMMAND, RESUMABLE_CHANGES, built_in_defaults, fold_base, script_name
from data import natural_key
from errors import DataError, explain, flag
from fileio import atomic_write, atomic_write_text

log = logging.getLogger("imgcomp")

# val_score: the run's --metric on the validation split (equal to val_acc for accuracy)
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
                  "val_score"]


def write_metrics(path: Path, history: list[dict]):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_COLUMNS)
            w.writeheader()
            w.writerows(history)
    atomic_write(path, write)


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(run_dir: Path) -> Path:
    """Draw a run's curves.png, loss and accuracy (train and validation), and the validation score when the run's
    metric is not accuracy, from its metrics.csv (and its config.json for the title, the metric and what the
    training loss includes)."""
    import matplotlib.ticker

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.csv")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    smoothing = config.get("label_smoothing", 0.0)
    epochs = [r["epoch"] for r in rows]
    metric = config.get("metric", "accuracy")
    with_score = metric != "accuracy" and any(not math.isnan(r.get("val_score", math.nan)) for r in rows)
    fig, axes = new_figure(1, 3 if with_score else 2, figsize=(15 if with_score else 10, 4))
    if with_score:
        axes[2].plot(epochs, [r["val_score"] for r in rows], "o-", color="C1", label="validation", markersize=3)
        axes[2].set_ylabel(metric.replace("_", " "))
    for ax in axes[2:]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    for ax, what in zip(axes, ("loss", "acc")):
        # The training loss is the objective: with label smoothing it cannot fall to the validation loss.
        label = f"train (with label smoothing {smoothing:g})" if what == "loss" and smoothing else "train"
        ax.plot(epochs, [r[f"train_{what}"] for r in rows], "o-", label=label, markersize=3)
        if any(not math.isnan(r[f"val_{what}"]) for r in rows):
            ax.plot(epochs, [r[f"val_{what}"] for r in rows], "o-", label="validation", markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel({"loss": "loss", "acc": "accuracy"}[what])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{run_dir.name} ({config['arch']})" if config.get("arch") else run_dir.name)
    fig.tight_layout()
    _save_figure(fig, run_dir / "curves.png")
    return run_dir / "curves.png"


class CurvesDrawer:
    """curves.png drawn in a thread beside training: `request` after each epoch's metrics.csv is written returns at
    once, the thread draws the newest request (one it had no time for is skipped: the next drawing shows its
    epoch too), and `close` waits for the last drawing. A drawing that fails is a warning: the curves are a view
    of metrics.csv, which holds the run's figures."""

    def __init__(self, run_dir: Path):
        self.run_dir, self._wanted, self._closed, self._thread = Path(run_dir), False, False, None
        self._cond = threading.Condition()

    def request(self):
        with self._cond:
            self._wanted = True
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._draw_requests, name="curves", daemon=True)
            self._thread.start()

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _draw_requests(self):
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if not self._wanted:
                    return
                self._wanted = False
            try:
                plot_curves(self.run_dir)
            except Exception as e:  # noqa: BLE001 - a figure must not end a run
                log.warning("%s/curves.png not drawn: %s", self.run_dir, e)


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: Path, title: str):
    """The confusion matrix as a heat map with counts; rows are the true classes."""
    n = len(class_names)
    side = min(20, 3 + 0.6 * n)
    fig, ax = new_figure(figsize=(side + 1, side))
    im = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        limit = confusion.max() / 2
        for (i, j), v in np.ndenumerate(confusion):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > limit else "black")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_wrong(pixels: np.ndarray, probs: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
               count: int = 16):
    """A grid of the `count` wrong predictions made with the highest confidence, with true and predicted labels."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:count]
    cols = max(1, min(4, len(wrong)))
    rows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = new_figure(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if len(wrong) == 0:
        axes[0, 0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
    for ax, i in zip(axes.flat, wrong):
        img = np.asarray(pixels[i])
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.transpose(1, 2, 0))
        ax.set_title(f"true: {class_names[labels[i]]}\npred: {class_names[predicted[i]]} ({probs[i, predicted[i]]:.0%})",
                     fontsize=8)
    fig.suptitle("most confidently wrong")
    fig.tight_layout()
    _save_figure(fig, path)


def new_figure(rows: int = 1, cols: int = 1, figsize=(6.4, 4.8), squeeze: bool = True):
    """A figure and its axes, drawn without a display: matplotlib's object API, not pyplot, so a figure belongs to
    whoever made it (curves.png is drawn in a thread beside training) and no pyplot state is left to close.
    Imported on first use: runs that draw nothing skip its start-up."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=squeeze)


def _save_figure(fig, path: Path):
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def write_predictions(path: Path, files: list[str], labels: list[str] | None, probs, class_names: list[str],
                      id_column: str = "file"):
    """Class probabilities, one row per image and one column per class (named as in training): the image's
    id (`id_column`), its label unless `labels` is None, then the probabilities. Labelled: a run's validation
    split at its best epoch, or out-of-fold predictions (`<the labels CSV's id column>,label,<classes>`; older
    runs: `file,label,...`, files relative to the data folder); unlabelled: the test images' probabilities for
    blending (`<the sample's id column>,<classes>`)."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([id_column, *(["label"] if labels is not None else []), *class_names])
            for i, (ident, row) in enumerate(zip(files, probs)):
                w.writerow([ident, *([labels[i]] if labels is not None else []), *(f"{v:.6f}" for v in row)])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def read_predictions(path: Path, labelled: bool = True) -> tuple[list[str], list[str] | None, list[str],
                                                                 list[list[float]]]:
    """(ids, labels, class names, probabilities) of a file written by `write_predictions`; labels are None
    when not `labelled`."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if labelled and (not rows or len(rows[0]) < 2 or rows[0][1] != "label"):  # the id column: "file" in older runs
        raise DataError(f"{path}: not a predictions file (header <id>,label,<classes>...)")
    if not rows or len(rows[0]) < 2:
        raise DataError(f"{path}: not a probabilities file (header id,<classes>...)")
    first = 2 if labelled else 1
    return ([r[0] for r in rows[1:]], [r[1] for r in rows[1:]] if labelled else None, rows[0][first:],
            [[float(v) for v in r[first:]] for r in rows[1:]])


TABLE_COLUMNS = [("run", "run"), ("arch", "architecture"), ("epochs", "epochs"), ("batch_size", "batch size"),
                 ("img_size", "image size"), ("best_val_acc", "best val acc"), ("metric", "metric"),
                 ("best_val_score", "best val score"), ("test_acc", "test acc"),
                 ("test_acc_tta", "test acc TTA"), ("train_time", "training time"), ("images_per_s", "images/s"),
                 ("mode", "precision"), ("status", "status")]


def _pid_alive(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # cannot tell from here
    try:
        os.kill(int(info.get("pid", 0)), 0)
        return True
    except (OSError, ValueError):
        return False


def run_command(config: dict, script_defaults: dict) -> str:
    """The command that trains the run of `config` (a config.json) in one go: its script, data and name (a
    fold's: the base name that --fold extends), and each option that differs from that script's defaults (as
    recorded in its run.json; without them, every option that differs from the built-in defaults)."""
    parts = ["python", script_name(config["arch"]), "--data", config["data"], "--name", base_run_name(config)]
    if config.get("runs_dir", "runs") != "runs":
        parts += ["--runs-dir", config["runs_dir"]]
    built_in = built_in_defaults()
    # An option missing from an older run's config.json did not exist then: the run had its built-in default.
    for key, value in {**built_in, **config}.items():
        if key in NOT_IN_COMMAND or key not in built_in or value == script_defaults.get(key, built_in[key]):
            continue
        parts += _option_args(key, value)
    return " ".join(shlex.quote(str(p)) for p in parts)


def base_run_name(config: dict) -> str:
    """The --name that trains the run of `config`: a fold's run is named NAME-fK by the trainer
    (config.fold_name), and its command gives NAME with --fold K."""
    return fold_base(config) or str(config["name"])


def _option_args(key: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag(key) if value else flag("no_" + key)]
    return [flag(key), f"{value:g}" if isinstance(value, float) else str(value)]


def start_options(config: dict) -> dict:
    """The options of `config` that a resume may change and that shape what the run trains (run.json's
    "starts" record them at each start)."""
    return {key: config.get(key) for key in sorted(RESUMABLE_CHANGES - NOT_IN_COMMAND)}


def run_commands(config: dict, script_defaults: dict, starts: list | None = None) -> list[str]:
    """The commands that train the run of `config` again, given its `starts` (run.json: the epoch each start
    began at and its `start_options`): one command when every start trained with the same options (a run
    resumed after a pause or a stop is the same run as one that went through), else the sequence: the first
    start's command stopped where the next began, then each resume with the options that changed."""
    starts = [s for s in starts or [] if isinstance(s, dict) and isinstance(s.get("options"), dict)]
    if not starts or starts[0].get("from_epoch") != 1 or all(s["options"] == starts[0]["options"] for s in starts):
        return [run_command(config, script_defaults)]  # one go (or a history from before starts were recorded)
    script = script_name(config["arch"])
    resume = (Path(config.get("runs_dir", "runs")) / config["name"]).as_posix()
    commands = []
    for i, start in enumerate(starts):
        options = start["options"]
        if i == 0:
            parts = shlex.split(run_command({**config, **options}, script_defaults))
        else:
            changed = {k: v for k, v in options.items() if v != starts[i - 1]["options"].get(k)}
            parts = ["python", script, "--resume", resume]
            parts += [a for k, v in changed.items() for a in _option_args(k, v)]
        stop = starts[i + 1]["from_epoch"] - 1 if i + 1 < len(starts) else None
        if stop is not None and stop < (options.get("epochs") or 0):  # where the next start took over
            parts += [flag("stop_at_epoch"), str(stop)]
        commands.append(" ".join(shlex.quote(str(p)) for p in parts))
    return commands


def _with_start(starts, run_dir: Path, from_epoch: int) -> list:
    """run.json's "starts" with this start's: the epoch it begins at and its `start_options`, read from the
    config.json it has just written. A start from an epoch before a recorded one replaces that one (a run
    trained again from an earlier point)."""
    try:
        options = start_options(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, AttributeError):
        return starts if isinstance(starts, list) else []
    kept = [s for s in (starts if isinstance(starts, list) else [])
            if isinstance(s, dict) and isinstance(s.get("from_epoch"), int) and s["from_epoch"] < from_epoch]
    return kept + [{"from_epoch": from_epoch, "options": options}]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (cells' '|' escaped); the runs table and the benchmarks' tables."""
    def cell(text):
        return str(text).replace("|", "\\|")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def read_run_info(run_dir: Path) -> dict | None:
    """A run folder's run.json, or None when it is missing, unreadable or not one of ours."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("status"), str) and "arch" in info else None


def runs_table(runs_dir: str | Path, commands: bool = False) -> str:
    """The runs of `runs_dir` (one run.json each) as a Markdown table; a run.json that is not one of ours (or
    is damaged) gets a row that says so. With `commands`, each run's command (from its config.json) follows
    the table, so a row can be reproduced."""
    rows, cmds = [], []
    for info_path in sorted(Path(runs_dir).glob("*/run.json"), key=lambda p: natural_key(p.parent.name)):
        info = read_run_info(info_path.parent)
        if info is None:
            rows.append([info_path.parent.name] + [""] * (len(TABLE_COLUMNS) - 2) + ["unreadable run.json"])
            continue
        status = info["status"]
        if status == "running" and not _pid_alive(info):
            status = "stopped (resumable)" if (info_path.parent / "last.pt").is_file() else \
                "stopped in its first epoch (train it again)"
        cells = {
            "run": info.get("name", info_path.parent.name), "arch": info["arch"],
            "epochs": f"{info.get('epochs_done', 0)}/{info.get('epochs', '?')}",
            "batch_size": info.get("batch_size", ""), "img_size": info.get("img_size", ""),
            "best_val_acc": pct(info.get("best_val_acc")), "metric": info.get("metric", "accuracy"),
            "best_val_score": _score(info.get("best_val_score", info.get("best_val_acc"))),
            "test_acc": _test_score(info, "test_acc"),
            "test_acc_tta": _test_score(info, "test_acc_tta"),
            "train_time": duration(info.get("train_time") or 0),
            "images_per_s": f"{info['images_per_s']:.0f}" if info.get("images_per_s") else "",
            "mode": info.get("mode", ""), "status": status,
        }
        rows.append([str(cells[key]) for key, _ in TABLE_COLUMNS])
        if commands:
            try:
                config = json.loads((info_path.parent / "config.json").read_text())
                sequence = run_commands(config, info.get("script_defaults", {}), info.get("starts"))
                cmds.append(f"{cells['run']}: {' && '.join(sequence)}")
            except (OSError, ValueError, KeyError, TypeError):
                cmds.append(f"{cells['run']}: (no readable config.json)")
    lines = [markdown_table([title for _, title in TABLE_COLUMNS], rows)]
    if cmds:
        lines += ["", "```", *cmds, "```"]
    return "\n".join(lines) + "\n"


TABLE_START, TABLE_END = "<!-- runs table: start -->", "<!-- runs table: end -->"


def write_table_into(path: Path, table: str):
    """Replace what stands between the runs-table markers of `path` (e.g. the README) with `table`."""
    text = path.read_text()
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise DataError(f"{path} has no '{TABLE_START}' ... '{TABLE_END}' markers to put the table between")
    atomic_write_text(path, text[:start + len(TABLE_START)] + "\n" + table + text[end:])


def _test_score(info: dict, key: str) -> str:
    """A recorded test score, followed by the epoch (and checkpoint) it measured when that is not the run's best.pt
    of its best epoch now (a score taken while the run trained, or of its last.pt)."""
    value, of = pct(info.get(key)), info.get(f"{key}_of")
    if not value or not isinstance(of, dict):
        return value
    other_file = of.get("checkpoint") != "best.pt"
    if other_file or (isinstance(info.get("best_epoch"), int) and of.get("epoch") != info["best_epoch"]):
        return f"{value} (epoch {of.get('epoch')}{', ' + str(of.get('checkpoint')) if other_file else ''})"
    return value


def _score(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def pct(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@contextlib.contextmanager
def _run_info_lock(run_dir: Path):
    """Hold the run folder's lock on run.json: an exclusive flock on the folder itself (no lock file to leave
    behind), so that the training process and a predict.py recording a score never write over each other's
    changes. Where the folder cannot be locked (no flock: not on Linux/macOS), writers go unlocked."""
    fd = None
    try:
        fd = os.open(run_dir, os.O_RDONLY)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def change_run_info(run_dir: Path, change, replace_unreadable: bool = True) -> bool:
    """The one writer of run.json: read it, `change(info)` (a dict it edits in place), write it back atomically,
    all under the run folder's lock (`_run_info_lock`), then refresh the runs table beside the run folders. A
    damaged or foreign run.json is replaced when `replace_unreadable`, else left alone (returns False). Never
    raises: a failure to write is a warning, not the end of a run. Returns whether run.json was written."""
    run_dir, info_path = Path(run_dir), Path(run_dir) / "run.json"
    written = False
    try:
        with _run_info_lock(run_dir):
            info = read_run_info(run_dir)
            if info is not None or replace_unreadable:
                info = info or {}
                change(info)
                atomic_write_text(info_path, json.dumps(info, indent=2))
                written = True
    except (OSError, TypeError, ValueError) as e:
        log.warning("could not update %s: %s", info_path, e)
    try:
        atomic_write_text(run_dir.parent / "runs.md", runs_table(run_dir.parent))
    except (OSError, TypeError, ValueError) as e:
        log.warning("could not update the runs table %s: %s", run_dir.parent / "runs.md", e)
    return written


def update_run_info(run_dir: Path, **fields):
    """The training process's record of its run: merge `fields` into run.json with this process's pid and host
    (the runs table tells a live run from a stopped one by them); a start (status "running" at `epochs_done`)
    also adds its options to run.json's "starts" (`run_commands`). Never raises (`change_run_info`)."""
    run_dir = Path(run_dir)

    def change(info: dict):
        if fields.get("status") == "running" and isinstance(fields.get("epochs_done"), int):  # a start
            info["starts"] = _with_start(info.get("starts"), run_dir, fields["epochs_done"] + 1)
        info.update(fields, pid=os.getpid(), host=socket.gethostname(), updated=time.strftime("%Y-%m-%d %H:%M:%S"))

    change_run_info(run_dir, change)


def record_test_score(run_dir: Path, key: str, value: float, checkpoint: Path, epoch: int, solution: str) -> bool:
    """A score of the run's model on labelled test images (predict.py --solution; `key`: test_acc or
    test_acc_tta), with what it measured: the checkpoint file and its epoch, and the solution, in run.json's
    `"<key>_of"`. It leaves the run's status, pid and host as they are: the run may still be training. A run.json
    that is not one of ours is left alone. Returns whether it was recorded."""
    measured = {"checkpoint": Path(checkpoint).name, "epoch": epoch, "solution": str(solution),
                "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    return change_run_info(run_dir, lambda info: info.update({key: value, f"{key}_of": measured}),
                           replace_unreadable=False)


def claim_run_dir(run_dir: Path) -> Path:
    """Claim `run_dir` for this training process: its `.lock` file is created atomically (O_EXCL) and holds
    our pid and host, so a second training with the same --name gets an error naming the first; a lock left
    by a process that no longer runs is taken over. Returns the lock file (see `release_run_dir`)."""
    lock = Path(run_dir) / ".lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(lock.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                if not owner or _pid_alive(owner):  # an empty lock is being written by its owner right now
                    raise DataError(f"run folder {run_dir} is in use by another training (pid {owner.get('pid', '?')} "
                                    f"on {owner.get('host', '?')}): wait for it to end, or choose another --name") from None
                lock.unlink(missing_ok=True)  # its process has gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            return lock
    except OSError as e:
        raise DataError(f"cannot write in the run folder {run_dir} ({e.strerror or e}): choose a writable "
                        "--runs-dir") from None
    raise DataError(f"run folder {run_dir}: could not claim it (another training claimed it at the same time?)")


def release_run_dir(run_dir: Path):
    """Remove the `.lock` of `run_dir` when it is this process's."""
    lock = Path(run_dir) / ".lock"
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError, AttributeError):
        pass


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    parser = cli.Parser(prog="runs.py", description="Tools for run folders.")
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="print the runs table as Markdown")
    table.add_argument("--runs-dir", type=cli.existing_folder,
                       help="the folder that holds the run folders (default: runs, when there is one)")
    table.add_argument("--commands", action="store_true", help="add the command that trains each run")
    table.add_argument("--into", type=Path, help="also write the table between the runs-table markers of this "
                       f"file ({TABLE_START} ... {TABLE_END})")
    plot = sub.add_parser("plot", help="redraw a run's curves.png from its metrics.csv")
    plot.add_argument("run_dir", type=Path, help="the run folder (its metrics.csv)")
    args = parser.parse_args(argv)
    if args.command == "table":
        table = runs_table(args.runs_dir or "runs", commands=args.commands)
        print(table, end="")
        if args.into:
            try:
                write_table_into(args.into, table)
            except DataError as e:
                sys.exit(f"error: {explain(e)}")
    else:
        if not (args.run_dir / "metrics.csv").is_file():
            sys.exit(f"error: {args.run_dir} has no metrics.csv (is it a run folder?)")
        print(plot_curves(args.run_dir))


if __name__ == "__main__":
    cli.run(main)
