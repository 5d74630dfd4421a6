"""The shared training module: options, the one training loop, evaluation, checkpoints, metrics, curves
and the runs table. Each train_<arch>.py only sets its defaults and calls `main`.

    python train_cnn.py --data data/fashion-mnist                 # train (see README for each architecture)
    python train_cnn.py --resume runs/cnn-20260101-120000 --epochs 30   # continue, possibly for longer
    torchrun --nproc_per_node 2 train_cnn.py --data DIR            # data-parallel on 2 processes
    python trainer.py table --runs-dir runs                        # the runs table as Markdown
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import importlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import data
from data import DataError
from models import MODELS, build_model

log = logging.getLogger("imgcomp")

CHECKPOINT_FORMAT = "imgcomp-checkpoint"
CHECKPOINT_VERSION = 1
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]


# ----------------------------------------------------------------------------------------------
# Options: one dataclass, turned into flags by one parser
# ----------------------------------------------------------------------------------------------

def _opt(default, help, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    data: str = _opt("", "dataset folder (train.csv + train/, or train/<class>/...)")
    arch: str = _opt("", "architecture (set by each train_<arch>.py)", choices=list(MODELS))
    epochs: int = _opt(10, "number of epochs (may be raised with --resume)")
    batch_size: int = _opt(128, "global batch size (split across torchrun processes)")
    img_size: int = _opt(28, "images are resized to this square size")
    lr: float = _opt(1e-3, "peak learning rate")
    optimizer: str = _opt("adamw", "optimiser", choices=["adamw", "sgd"])
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(0.05, "weight decay (decoupled for AdamW)")
    warmup_epochs: float = _opt(1.0, "linear warm-up in epochs (at most a quarter of the run), then cosine decay to zero")
    label_smoothing: float = _opt(0.0, "label smoothing of the training loss")
    grad_clip: float = _opt(0.0, "clip the gradient norm to this value (0: off)")
    val_split: float = _opt(0.1, "stratified hold-out fraction; 0 trains on everything")
    hflip: bool = _opt(True, "random horizontal flips")
    rotate: float = _opt(10.0, "random rotation up to this many degrees either way (0: off)")
    translate: int = _opt(0, "random shift up to this many pixels either way (0: off)")
    erase: float = _opt(0.0, "random erasing: probability of replacing a random rectangle of an image with noise")
    ema: float = _opt(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. 0.999; "
                           "0: off); it is what is evaluated and saved for prediction")
    normalize: bool = _opt(True, "normalise with the training images' per-channel mean/std")
    precision: str = _opt("auto", "fp32, bf16, fp16, or auto: measure which is fastest here",
                          choices=["auto", "fp32", "bf16", "fp16"])
    channels_last: str = _opt("auto", "memory format: on, off, or auto (measured with --precision)",
                              choices=["auto", "on", "off"])
    compile: bool = _opt(False, "compile the model with torch.compile (needs a C++ compiler on the CPU): the first step "
                                "takes 15 s to minutes longer; whether later steps are faster depends on the model and "
                                "machine: bench/compile_step.py measures it")
    seed: int = _opt(0, "random seed (split, initialisation, shuffling, augmentation)")
    name: str = _opt("", "run name (default: <arch>-<date>-<time>)")
    runs_dir: str = _opt("runs", "folder that holds the run folders")
    resume: str = _opt("", "continue the run in this folder from its last.pt")
    init: str = _opt("", "start from the weights of this checkpoint (the head is replaced if classes differ)")
    pretrained: bool = _opt(False, "start from timm/torchvision ImageNet weights (needs network)")
    skip_bad: bool = _opt(False, "leave out unreadable images (listed in the run folder) instead of stopping")
    id_col: str = _opt("", "id column of train.csv (default: detected)")
    label_col: str = _opt("", "label column of train.csv (default: detected)")
    cache_dir: str = _opt("", "where decoded images are cached (default: DATA/.cache)")
    device: str = _opt("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    stop_at_epoch: int = _opt(0, "stop (resumably) after this epoch, keeping the schedule of --epochs; "
                                 "continue later with --resume (0: off)")
    progress: bool = _opt(True, "show a progress bar per epoch")


# Flags that may differ from the saved run when resuming; any other flag must match it.
RESUMABLE_CHANGES = {"epochs", "stop_at_epoch", "progress", "resume", "device", "runs_dir", "cache_dir", "compile"}


def build_parser(arch: str, defaults: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"train_{arch}.py", description=f"Train the {arch} architecture on an image dataset.",
        argument_default=argparse.SUPPRESS, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "arch":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        help_text = f.metadata["help"] + (f" (default: {default})" if default not in ("", None) else "")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(flag, type=kind, help=help_text, choices=f.metadata.get("choices"),
                                metavar=None if "choices" in f.metadata else f.name.upper())
    return parser


def parse_config(arch: str, defaults: dict, argv=None) -> TrainConfig:
    """Script defaults, overridden by the saved run when resuming, overridden by the flags given."""
    unknown = set(defaults) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"train_{arch}.py sets unknown defaults {sorted(unknown)}")
    given = vars(build_parser(arch, defaults).parse_args(argv))
    values = {**dataclasses.asdict(TrainConfig()), **defaults, "arch": arch}
    if given.get("resume"):
        saved = _saved_config(Path(given["resume"]))
        if saved.get("arch") != arch:
            raise DataError(f"--resume {given['resume']}: that run trained {saved.get('arch')!r}, "
                            f"not {arch!r}; use train_{saved.get('arch')}.py")
        changed = [k for k, v in given.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v]
        if changed:
            raise DataError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} cannot change "
                            f"when resuming (only {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE_CHANGES))} can)")
        # An option the saved run does not know did not exist then: it keeps its built-in (off) default.
        values.update({k: saved.get(k, default) for k, default in dataclasses.asdict(TrainConfig()).items()
                       if k != "arch"})
    values.update(given)
    config = TrainConfig(**values)
    if not config.data:
        raise DataError("--data DIR is required (a folder with train.csv + train/, or train/<class>/...)")
    for name in ("epochs", "batch_size", "img_size"):
        if getattr(config, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    for name in ("erase", "ema"):
        if not 0 <= getattr(config, name) < 1:
            raise DataError(f"--{name} must be in [0, 1), got {getattr(config, name)}")
    if config.translate < 0 or config.rotate < 0:
        raise DataError(f"--translate and --rotate cannot be negative (got {config.translate}, {config.rotate})")
    if config.lr <= 0:
        raise DataError(f"--lr must be positive, got {config.lr}")
    return config


def _saved_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not (run_dir / "last.pt").is_file() or not path.is_file():
        raise DataError(f"--resume {run_dir}: no run there (expected {run_dir}/last.pt and config.json)")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------
# Device, processes and precision: decided once, before the loop
# ----------------------------------------------------------------------------------------------

@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device, and join the torchrun process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"--device {device}: CUDA is not available on this machine")
        dev = torch.device("cuda", local_rank if world_size > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cpu":  # share the cores between the processes of this machine
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return Runtime(dev, int(os.environ.get("RANK", "0")), world_size, local_rank)


@dataclass(frozen=True)
class Mode:
    """Numeric precision and memory format of the model's computation."""
    precision: str = "fp32"
    channels_last: bool = False

    def __str__(self):
        return self.precision + ("+channels_last" if self.channels_last else "")

    @property
    def dtype(self):
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.precision != "fp32")


def candidate_modes(precision: str, channels_last: str, device: torch.device) -> list[Mode]:
    if precision == "auto":
        # fp16 needs loss scaling and overflows more easily; it is used only when asked for.
        precisions = ["fp32", "bf16"] if device.type == "cpu" or torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    else:
        precisions = [precision]
    formats = {"auto": [False, True], "on": [True], "off": [False]}[channels_last]
    return [Mode(p, cl) for p in precisions for cl in formats]


def measure_modes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, modes: list[Mode], device: torch.device,
                  warmup: int = 2, min_steps: int = 5, max_steps: int = 15, budget_s: float = 60.0) -> dict[Mode, float]:
    """Seconds of a training step (forward, backward, AdamW) of a copy of `model` on the batch (x, y) in each
    mode: the mean of the timed steps without the slowest one, since a run's time is the sum of its steps
    (bf16 steps of some models are bimodal: a median hides their slow half). The model itself is left untouched.

    The modes take turns, step by step, so a burst of load from elsewhere on the machine hits them alike.
    The first `warmup` rounds are not timed (oneDNN builds its kernels there). After `min_steps` timed rounds,
    modes more than 25% slower than the best are dropped; measuring stops when one mode leads the next by
    more than 10%, or after `max_steps` rounds, or once `budget_s` seconds of timed steps have passed. On a
    shared machine single steps vary by 15% or more (bf16 ones by up to 2x), so modes that close need the
    extra rounds: with CoAtNet's 1.2 s steps, fewer than 5 rounds or a 30 s budget picked the wrong mode of two
    13% apart about half the time."""
    trials = {}
    for mode in modes:
        trial = copy.deepcopy(model).to(device, memory_format=mode.memory_format).train()
        trials[mode] = (trial, torch.optim.AdamW(trial.parameters(), lr=0.0, weight_decay=0.0),
                        torch.amp.GradScaler(device.type, enabled=mode.precision == "fp16"),
                        x.to(device, memory_format=mode.memory_format), y.to(device))
    times: dict[Mode, list[float]] = {mode: [] for mode in modes}
    active, spent = list(modes), 0.0
    for round_ in range(warmup + max_steps):
        for mode in active:
            trial, opt, scaler, xb, yb = trials[mode]
            _sync(device)
            start = time.perf_counter()
            with mode.autocast(device):
                loss = F.cross_entropy(trial(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if round_ >= warmup:
                times[mode].append(time.perf_counter() - start)
                spent += times[mode][-1]
        if round_ + 1 < warmup + min_steps:
            continue
        ranked = sorted((_step_time(times[m]), i) for i, m in enumerate(active))
        active = [active[i] for t, i in ranked if t <= 1.25 * ranked[0][0]]
        if len(active) == 1 or ranked[1][0] > 1.10 * ranked[0][0] or spent >= budget_s:
            break
    return {mode: _step_time(t) for mode, t in times.items()}


def _step_time(times: list[float]) -> float:
    """Mean step time without the slowest step (one pause of the machine should not decide)."""
    return statistics.fmean(sorted(times)[:-1]) if len(times) > 2 else statistics.fmean(times)


def pick_mode(times: dict[Mode, float], tolerance: float = 0.05) -> Mode:
    """The fastest mode, except that full precision (fp32) wins when it is within `tolerance` of a faster
    reduced-precision mode: a few per cent of speed is not worth bf16/fp16's rounding, and modes that
    close are within the noise of the measurement anyway."""
    best = min(times, key=times.get)
    full = [m for m in times if m.precision == "fp32" and times[m] <= (1 + tolerance) * times[best]]
    return min(full, key=times.get) if full else best


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_mode(config: TrainConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> Mode:
    modes = candidate_modes(config.precision, config.channels_last, rt.device)
    if len(modes) == 1:
        return modes[0]
    times = measure_modes(model, x, y, modes, rt.device)
    best = pick_mode(times)
    if rt.distributed:  # every process must run the same mode: rank 0's measurement decides
        box = [best]
        dist.broadcast_object_list(box, src=0)
        best = box[0]
    log.info("precision auto: %s -> using %s", ", ".join(f"{m} {t * 1000:.0f} ms/step" for m, t in times.items()), best)
    return best


# ----------------------------------------------------------------------------------------------
# Checkpoints: self-describing, written atomically, loaded without running code
# ----------------------------------------------------------------------------------------------

def atomic_write(path: Path, write):
    """Call write(tmp_path), then move it over `path`: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: Path, checkpoint: dict):
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load one of our checkpoints without executing code (weights_only); refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors come in many types
        raise DataError(f"{path} is not a checkpoint of this toolkit, or would need code execution to load "
                        f"(refused): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a checkpoint of this toolkit (no '{CHECKPOINT_FORMAT}' marker)")
    if checkpoint.get("version", 0) > CHECKPOINT_VERSION:
        raise DataError(f"{path} was written by a newer version of this toolkit")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    model = build_model(checkpoint["arch"], **checkpoint["model_args"])
    model.load_state_dict(checkpoint["model"])
    return model


def init_from_checkpoint(model: nn.Module, path: str, arch: str):
    """Copy the weights of a checkpoint of the same architecture; layers whose shapes differ (the head,
    when the classes differ) keep their fresh initialisation."""
    checkpoint = load_checkpoint(path)
    if checkpoint["arch"] != arch:
        raise DataError(f"--init {path}: that checkpoint is a {checkpoint['arch']!r}, not a {arch!r}")
    own = model.state_dict()
    kept = {k: v for k, v in checkpoint["model"].items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    fresh = sorted(set(own) - set(kept))
    log.info("--init %s: loaded %d tensors%s", path, len(kept), f", re-initialised {fresh}" if fresh else "")


# ----------------------------------------------------------------------------------------------
# Metrics, curves and the runs table
# ----------------------------------------------------------------------------------------------

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
    """Draw a run's curves.png, loss and accuracy (train and validation), from its metrics.csv (and its
    config.json for the title and what the training loss includes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.csv")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    smoothing = config.get("label_smoothing", 0.0)
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
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
    atomic_write(run_dir / "curves.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return run_dir / "curves.png"


TABLE_COLUMNS = [("run", "run"), ("arch", "architecture"), ("epochs", "epochs"), ("batch_size", "batch size"),
                 ("img_size", "image size"), ("best_val_acc", "best val acc"), ("test_acc", "test acc"),
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


# Flags that say where or how a run is carried out, not what it trains: left out of its command.
NOT_IN_COMMAND = {"arch", "data", "name", "runs_dir", "resume", "progress", "stop_at_epoch", "device", "cache_dir",
                  "compile"}


def run_command(config: dict) -> str:
    """The command that trains the run of `config` (a config.json) in one go: its script, data and name,
    and each option that differs from that script's defaults."""
    script = f"train_{config['arch']}.py"
    try:
        defaults = importlib.import_module(f"train_{config['arch']}").DEFAULTS
    except ImportError:
        defaults = {}
    built_in = dataclasses.asdict(TrainConfig())
    parts = ["python", script, "--data", config["data"], "--name", config["name"]]
    if config.get("runs_dir", "runs") != "runs":
        parts += ["--runs-dir", config["runs_dir"]]
    # An option missing from an older run's config.json did not exist then: the run had its built-in default.
    for key, value in {**built_in, **config}.items():
        if key in NOT_IN_COMMAND or key not in built_in or value == defaults.get(key, built_in[key]):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(shlex.quote(str(p)) for p in parts)


def runs_table(runs_dir: str | Path, commands: bool = False) -> str:
    """The runs of `runs_dir` (one run.json each) as a Markdown table; with `commands`, each run's command
    (from its config.json) follows the table, so a row can be reproduced."""
    rows, cmds = [], []
    for info_path in sorted(Path(runs_dir).glob("*/run.json"), key=lambda p: data.natural_key(p.parent.name)):
        info = json.loads(info_path.read_text())
        if info["status"] == "running" and not _pid_alive(info):
            info["status"] = "stopped (resumable)"
        cells = {
            "run": info["name"], "arch": info["arch"], "epochs": f"{info['epochs_done']}/{info['epochs']}",
            "batch_size": info["batch_size"], "img_size": info["img_size"],
            "best_val_acc": _pct(info.get("best_val_acc")), "test_acc": _pct(info.get("test_acc")),
            "test_acc_tta": _pct(info.get("test_acc_tta")),
            "train_time": _duration(info.get("train_time", 0)),
            "images_per_s": f"{info['images_per_s']:.0f}" if info.get("images_per_s") else "",
            "mode": info.get("mode", ""), "status": info["status"],
        }
        rows.append([str(cells[key]) for key, _ in TABLE_COLUMNS])
        config_path = info_path.parent / "config.json"
        if commands and config_path.is_file():
            cmds.append(f"{info['name']}: {run_command(json.loads(config_path.read_text()))}")
    header = [title for _, title in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
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
    new = text[:start + len(TABLE_START)] + "\n" + table + text[end:]
    atomic_write(path, lambda tmp: tmp.write_text(new))


def _pct(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def update_run_info(run_dir: Path, **fields):
    """Merge `fields` into the run's run.json and refresh the runs table beside the run folders."""
    path = run_dir / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.update(fields, pid=os.getpid(), host=socket.gethostname(), updated=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    table = runs_table(run_dir.parent)
    atomic_write(run_dir.parent / "runs.md", lambda tmp: tmp.write_text(table))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

class StopRequest:
    """Ctrl-C (or SIGTERM) asks the loop to stop after the current step and save a resumable
    checkpoint, rather than dying in the middle of an optimiser update; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("\nstopping after this step and saving a resumable checkpoint (Ctrl-C again to abort)")


class Diverged(RuntimeError):
    pass


class EMA:
    """Exponential moving average of a model's weights and buffers (BatchNorm statistics included),
    updated after each optimiser step. The decay ramps up as (1 + step) / (10 + step), so the
    average does not hold on to the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._floats = ([e for e, m in pairs if e.is_floating_point()], [m for e, m in pairs if m.is_floating_point()])
        self._others = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int):
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._floats[0], self._floats[1], 1.0 - decay)
        for e, m in self._others:
            e.copy_(m)


@dataclass
class Session:
    """Everything the loop works with, set up once by `prepare_session`."""
    config: TrainConfig
    rt: Runtime
    run_dir: Path
    model: nn.Module  # what trains: DistributedDataParallel-wrapped when distributed, compiled with --compile
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    mode: Mode
    pixels: np.ndarray
    labels: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    class_names: list[str]
    mean: list[float]
    std: list[float]
    augment: data.Augment
    steps_per_epoch: int
    files: list[Path]
    ema: EMA | None = None
    history: list[dict] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    train_time: float = 0.0

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to zero, over every step of the run."""
        total = self.config.epochs * self.steps_per_epoch
        # A short run still decays: the warm-up never takes more than a quarter of it.
        warmup = min(int(self.config.warmup_epochs * self.steps_per_epoch), total // 4)
        if step < warmup:
            return self.config.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved for prediction: the moving average when --ema is on."""
        return self.ema.model if self.ema else self.raw_model

    def inputs(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 images on the device -> the model's input (augmented when training)."""
        return data.prepare_batch(x, (self.mean, self.std) if self.config.normalize else None,
                                  self.augment if train else None, self.mode.memory_format)

    def checkpoint(self, epoch: int, step: int = 0, partial: dict | None = None, light: bool = False) -> dict:
        ckpt = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "arch": self.config.arch,
            "model_args": {"num_classes": len(self.class_names), "in_chans": int(self.pixels.shape[1]),
                           "img_size": self.config.img_size},
            "class_names": list(self.class_names), "img_size": self.config.img_size,
            "channels": int(self.pixels.shape[1]), "normalize": self.config.normalize,
            "mean": self.mean, "std": self.std, "mode": {"precision": self.mode.precision,
                                                         "channels_last": self.mode.channels_last},
            "config": dataclasses.asdict(self.config),
            "model": self.eval_model.state_dict(),
            "epoch": epoch, "history": self.history,
            "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "train_time": self.train_time,
            "val_files": [_rel(p, self.config.data) for p in (self.files[i] for i in self.val_idx)],
        }
        if not light:
            ckpt.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), step=step,
                        partial=partial or {}, rng=torch.get_rng_state(),
                        cuda_rng=torch.cuda.get_rng_state(self.rt.device) if self.rt.device.type == "cuda" else None)
            if self.ema:  # resuming needs the trained weights as well as their average
                ckpt["train_model"] = self.raw_model.state_dict()
        return ckpt


def _rel(path: Path, root: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _all_reduce(values: list[float], rt: Runtime) -> list[float]:
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device if rt.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def _any_process(flag: bool, rt: Runtime) -> bool:
    """True on every process when `flag` is true on any of them."""
    if not rt.distributed:
        return flag
    t = torch.tensor([float(flag)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def train_one_epoch(s: Session, epoch: int, stop: StopRequest, start_step: int = 0, partial: dict | None = None) -> dict:
    """One epoch of training (epochs count from 1). Returns its summed metrics, or, when a stop was
    requested, the position reached, with 'stopped_at' set."""
    cfg, rt = s.config, s.rt
    s.model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)  # loss * n, correct, n (this process)
    if partial and rt.is_main:  # the interrupted part of this epoch, summed over processes when saved
        sums += torch.tensor([partial["loss_sum"], partial["correct"], partial["seen"]], dtype=torch.float64,
                             device=rt.device)
    seconds = partial["seconds"] if partial else 0.0
    batches = data.iterate_batches(s.pixels, s.labels, s.train_idx, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                   epoch=epoch, drop_last=True, start_step=start_step, rank=rt.rank,
                                   world_size=rt.world_size)
    bar = tqdm(total=s.steps_per_epoch, initial=start_step, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
               disable=not (rt.is_main and cfg.progress), leave=False, dynamic_ncols=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start = time.perf_counter()
    step = start_step
    for step, (x, y) in enumerate(data.prefetch(batches, rt.device), start=start_step):
        lr = s.lr_at((epoch - 1) * s.steps_per_epoch + step)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        x = s.inputs(x, train=True)
        with s.mode.autocast(rt.device):
            logits = s.model(x)
            loss = loss_fn(logits, y)
        s.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)
        if s.ema:
            s.ema.update((epoch - 1) * s.steps_per_epoch + step)
        sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=rt.device)])
        bar.update()
        last = step + 1 == s.steps_per_epoch
        if step % 10 == 0 or last:  # reading values back waits for the device: not every step
            loss_sum, correct, seen = sums.tolist()
            if not math.isfinite(loss_sum):
                raise Diverged(f"the training loss became {loss_sum} at epoch {epoch}, step {step + 1}")
            elapsed = seconds + time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                            img_s=f"{seen * rt.world_size / max(elapsed, 1e-9):.0f}", refresh=False)
        if not last and _any_process(stop.requested, rt):
            loss_sum, correct, seen = _all_reduce(sums.tolist(), rt)
            bar.close()
            return {"stopped_at": step + 1, "loss_sum": loss_sum, "correct": correct, "seen": seen,
                    "seconds": seconds + time.perf_counter() - start}
    bar.close()
    loss_sum, correct, seen = _all_reduce(sums.tolist(), rt)
    if not math.isfinite(loss_sum):
        raise Diverged(f"the training loss became {loss_sum} at epoch {epoch}")
    seconds += time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "seen": seen, "seconds": seconds,
            "lr": s.optimizer.param_groups[0]["lr"], "stopped_at": None}


@torch.no_grad()
def evaluate(s: Session, indices: np.ndarray) -> dict:
    """Loss and accuracy on `indices` (no augmentation), summed over all processes."""
    if len(indices) == 0:
        return {"loss": math.nan, "acc": math.nan}
    model = s.eval_model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=s.rt.device)
    batches = data.iterate_batches(s.pixels, s.labels, indices, s.config.batch_size * 2, rank=s.rt.rank,
                                   world_size=s.rt.world_size)
    for x, y in data.prefetch(batches, s.rt.device):
        if len(y) == 0:
            continue
        with s.mode.autocast(s.rt.device):
            logits = model(s.inputs(x, train=False))  # no DDP forward: ranks may have uneven batches
        sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                             (logits.argmax(1) == y).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=s.rt.device)])
    loss_sum, correct, seen = _all_reduce(sums.tolist(), s.rt)
    return {"loss": loss_sum / seen, "acc": correct / seen}


def prepare_session(config: TrainConfig, rt: Runtime) -> tuple[Session, dict | None]:
    """Load the data, build the model and optimiser, choose the precision, and restore a resumed run."""
    torch.manual_seed(config.seed)
    resume = load_checkpoint(Path(config.resume) / "last.pt") if config.resume else None
    run_dir = Path(config.resume) if config.resume else \
        Path(config.runs_dir) / (config.name or f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not config.resume and (run_dir / "last.pt").exists():
        raise DataError(f"run folder {run_dir} already holds a run: resume it with --resume {run_dir}, "
                        "or choose another --name")
    config.name = run_dir.name

    found = data.find_labelled_images(config.data, config.id_col or None, config.label_col or None)
    if rt.is_main:
        for note in found.notes:
            log.info(note)
    cache_dir = config.cache_dir or None
    if rt.distributed and not rt.is_main:
        dist.barrier()  # rank 0 decodes and caches first; the others then read its cache
    images = data.load_images(found.files, config.img_size, None, cache_dir, progress=rt.is_main and config.progress)
    if rt.distributed and rt.is_main:
        dist.barrier()
    if images.bad and not config.skip_bad:
        images.raise_if_bad()
    train_idx, val_idx = data.stratified_split(found.labels, config.val_split, config.seed)
    if images.bad:
        train_idx = np.setdiff1d(train_idx, list(images.bad))
        val_idx = np.setdiff1d(val_idx, list(images.bad))
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "skipped.txt").write_text("".join(f"{images.files[i]}\t{why}\n" for i, why in sorted(images.bad.items())))
            log.warning("--skip-bad: left out %d unreadable image(s), listed in %s", len(images.bad), run_dir / "skipped.txt")
    if resume and resume["class_names"] != found.class_names:
        raise DataError(f"--resume: the classes in {config.data} differ from the run's {resume['class_names']}")
    local_batch = config.batch_size // rt.world_size
    if local_batch < 1:
        raise DataError(f"--batch-size {config.batch_size} is smaller than the number of processes ({rt.world_size})")
    if len(train_idx) < 2:
        raise DataError(f"only {len(train_idx)} training image(s) after the validation split")
    mean, std = (resume["mean"], resume["std"]) if resume else \
        data.channel_stats(images.pixels, train_idx) if config.normalize else ([0.0] * images.channels, [1.0] * images.channels)

    try:
        model = build_model(config.arch, len(found.class_names), images.channels, config.img_size,
                            pretrained=config.pretrained and not resume)
    except (ValueError, RuntimeError) as e:  # e.g. no pretrained weights offline, an unsuitable --img-size
        raise DataError(str(e)) from None
    if config.init and not resume:
        init_from_checkpoint(model, config.init, config.arch)
    model.to(rt.device)
    if resume:
        model.load_state_dict(resume.get("train_model", resume["model"]))
        mode = Mode(**resume["mode"])
    else:
        x, y = next(data.iterate_batches(images.pixels, found.labels, train_idx, local_batch, shuffle=True, seed=config.seed))
        mode = choose_mode(config, model, data.prepare_batch(x.to(rt.device), (mean, std)), y, rt)
    model.to(memory_format=mode.memory_format)

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # biases and norms are not decayed
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=mode.precision == "fp16")
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None) \
        if rt.distributed else model
    if config.compile:
        wrapped = compile_model(wrapped, rt)
    s = Session(config, rt, run_dir, wrapped, model, optimizer, scaler, mode, images.pixels, found.labels,
                train_idx, val_idx, found.class_names, mean, std,
                data.Augment(hflip=config.hflip, rotate=config.rotate, translate=config.translate, erase=config.erase),
                data.count_batches(len(train_idx), config.batch_size, drop_last=True), found.files,
                EMA(model, config.ema) if config.ema else None)
    if resume and s.ema:
        s.ema.model.load_state_dict(resume["model"])
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        s.history, s.best_val_acc, s.best_epoch = resume["history"], resume["best_val_acc"], resume["best_epoch"]
        s.train_time = resume["train_time"]
    return s, resume


def compile_model(model: nn.Module, rt: Runtime) -> nn.Module:
    """torch.compile for training. It shares the parameters of `model`, whose state_dict (without the compiled
    wrapper's "_orig_mod." prefix) is what checkpoints keep; evaluation runs the plain model."""
    if rt.device.type == "cpu":
        import torch._inductor.config as inductor_config
        wanted = inductor_config.cpp.cxx  # what inductor will run: $CXX, else g++ (clang++ on macOS)
        names = [c for c in (wanted if isinstance(wanted, (list, tuple)) else (wanted,)) if c]
        if not any(shutil.which(c) for c in names):
            raise DataError(f"--compile on the CPU needs a C++ compiler ({' or '.join(names)}, set by $CXX) and "
                            "found none on the PATH: install one (e.g. apt-get install g++) or train without "
                            "compiling (--no-compile)")
    if rt.is_main:
        log.info("--compile: compiling the model; the first training step takes longer")
    return torch.compile(model)


def train(config: TrainConfig) -> Path:
    """Train a model as `config` says; returns the run folder."""
    rt = setup_runtime(config.device)
    logging.basicConfig(level=logging.INFO if rt.is_main else logging.WARNING, format="%(message)s", stream=sys.stdout,
                        force=True)
    try:
        return _train(config, rt)
    finally:
        if rt.distributed:
            dist.destroy_process_group()


def _train(config: TrainConfig, rt: Runtime) -> Path:
    s, resume = prepare_session(config, rt)
    run_dir = s.run_dir
    start_epoch = resume["epoch"] + 1 if resume else 1
    start_step, partial = (resume.get("step", 0), resume.get("partial")) if resume else (0, None)
    if start_step >= s.steps_per_epoch:
        start_step, partial = 0, None
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(dataclasses.asdict(config), indent=2)))
        update_run_info(run_dir, name=run_dir.name, arch=config.arch, epochs=config.epochs,
                        epochs_done=start_epoch - 1, batch_size=config.batch_size, img_size=config.img_size,
                        mode=str(s.mode), status="running", best_val_acc=s.best_val_acc if s.best_epoch else None,
                        train_time=s.train_time)
        log.info("%s: %s on %s, %d classes, %d train / %d val images of %dx%dx%d, %s, %d epochs -> %s",
                 "resuming" if resume else "training", config.arch, rt.device, len(s.class_names), len(s.train_idx),
                 len(s.val_idx), s.pixels.shape[1], config.img_size, config.img_size, s.mode, config.epochs, run_dir)
    if start_epoch > config.epochs:
        log.info("the run already has %d epochs; raise --epochs to train longer", config.epochs)
    epoch = start_epoch - 1
    with StopRequest() as stop:
        try:
            for epoch in range(start_epoch, config.epochs + 1):
                if start_step and resume and resume.get("rng") is not None:  # continue mid-epoch exactly
                    torch.set_rng_state(resume["rng"])
                    if resume.get("cuda_rng") is not None:
                        torch.cuda.set_rng_state(resume["cuda_rng"], rt.device)
                else:  # each epoch's randomness depends only on (seed, epoch), so resuming repeats it
                    torch.manual_seed(config.seed * 100_003 + epoch * 1009 + rt.rank)
                result = train_one_epoch(s, epoch, stop, start_step, partial)
                start_step, partial = 0, None
                if result["stopped_at"] is not None:
                    if rt.is_main:
                        # The checkpoint's train_time counts finished epochs only: the unfinished epoch's seconds
                        # travel in `partial`, and the resumed epoch's own seconds already include them.
                        save_checkpoint(run_dir / "last.pt", s.checkpoint(epoch - 1, result["stopped_at"], {
                            k: result[k] for k in ("loss_sum", "correct", "seen", "seconds")}))
                        update_run_info(run_dir, status="interrupted", train_time=s.train_time + result["seconds"])
                        log.warning("stopped at epoch %d step %d; resume with: python train_%s.py --resume %s",
                                    epoch, result["stopped_at"], config.arch, run_dir)
                    raise SystemExit(130)
                val = evaluate(s, s.val_idx)
                s.train_time += result["seconds"]
                row = {"epoch": epoch, "train_loss": result["loss"], "train_acc": result["acc"], "val_loss": val["loss"],
                       "val_acc": val["acc"], "lr": result["lr"], "seconds": result["seconds"],
                       "images_per_s": result["seen"] / max(result["seconds"], 1e-9)}
                s.history.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
                improved = len(s.val_idx) == 0 or val["acc"] > s.best_val_acc
                if improved:
                    s.best_val_acc, s.best_epoch = (val["acc"] if len(s.val_idx) else math.nan), epoch
                if rt.is_main:
                    save_checkpoint(run_dir / "last.pt", s.checkpoint(epoch))
                    if improved:
                        save_checkpoint(run_dir / "best.pt", s.checkpoint(epoch, light=True))
                    write_metrics(run_dir / "metrics.csv", s.history)
                    plot_curves(run_dir)
                    update_run_info(run_dir, epochs_done=epoch, best_val_acc=s.best_val_acc, best_epoch=s.best_epoch,
                                    train_time=s.train_time,
                                    # the median epoch: one epoch slowed by other work on the machine does not set it
                                    images_per_s=statistics.median(r["images_per_s"] for r in s.history))
                    log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2e  %.1fs  %.0f img/s%s",
                             epoch, config.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                             row["lr"], row["seconds"], row["images_per_s"], "  *best*" if improved and len(s.val_idx) else "")
                if epoch < config.epochs and (epoch == config.stop_at_epoch or _any_process(stop.requested, rt)):
                    if rt.is_main:
                        update_run_info(run_dir, status="paused" if epoch == config.stop_at_epoch else "interrupted")
                        log.info("stopped after epoch %d of %d; continue with: python train_%s.py --resume %s",
                                 epoch, config.epochs, config.arch, run_dir)
                    return run_dir
        except Diverged as e:
            if rt.is_main:
                update_run_info(run_dir, status="diverged")
            kept = "best.pt and last.pt keep the last good epoch" if epoch > 1 else "no checkpoint was saved"
            raise DataError(f"{e}: stopping ({kept}). Try a lower --lr, --grad-clip 1, or --precision fp32.") from None
    if rt.is_main:
        update_run_info(run_dir, status="finished")
        log.info("done: best val acc %s at epoch %d; %s", _pct(s.best_val_acc) or "n/a (no validation split)",
                 s.best_epoch, run_dir)
    return run_dir


def main(arch: str, argv=None, **defaults) -> Path | None:
    """Entry point of each train_<arch>.py: parse flags over the script's defaults and train."""
    try:
        return train(parse_config(arch, defaults, argv))
    except DataError as e:
        sys.exit(f"error: {e}")


def cli(argv=None):
    parser = argparse.ArgumentParser(description="Tools for run folders.")
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="print the runs table as Markdown")
    table.add_argument("--runs-dir", default="runs")
    table.add_argument("--commands", action="store_true", help="add the command that trains each run")
    table.add_argument("--into", type=Path, help="also write the table between the runs-table markers of this "
                       f"file ({TABLE_START} ... {TABLE_END})")
    plot = sub.add_parser("plot", help="redraw a run's curves.png from its metrics.csv")
    plot.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "table":
        table = runs_table(args.runs_dir, commands=args.commands)
        print(table, end="")
        if args.into:
            try:
                write_table_into(args.into, table)
            except DataError as e:
                sys.exit(f"error: {e}")
    else:
        if not (args.run_dir / "metrics.csv").is_file():
            sys.exit(f"error: {args.run_dir} has no metrics.csv (is it a run folder?)")
        print(plot_curves(args.run_dir))


if __name__ == "__main__":
    cli()
