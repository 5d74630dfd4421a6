"""Setting up a training session, once before the loop: the run's folder, its images and their split, the
normalisation, the model (built new, or restored from a resumed run), the compute format, the optimiser, EMA and
the learning-rate schedule. trainer.py trains the `Session` that `prepare_session` returns.

    s, resume, choice = prepare_session(config, setup_runtime(config.device))
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import logging
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import data
import metrics
import runs
from checkpoint import ModelSpec, describe_spec, init_from_checkpoint, load_resumable, load_weights, make_checkpoint
import recipe
from compute import ComputeFormat, choose_format, measure_formats
from config import MIN_BATCH, MIN_IMG_SIZE, TrainConfig, default_run_name
from errors import DataError, OptionError, SetupError, UsageError
from fileio import atomic_write_text
from images import label_text
from models import MODEL_OPTIONS, WEIGHTS, build_model, head_name
from runtime import Runtime, compile_model, seconds_since_start

log = logging.getLogger("imgcomp")


# ----------------------------------------------------------------------------------------------
# What the loop works with
# ----------------------------------------------------------------------------------------------

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
class LRSchedule:
    """Linear warm-up, then cosine decay to zero, over every step of the run's first `epochs`. A resume that changed
    --epochs adds a part (`resumed_schedule`): from its step "from_step" on, a linear warm-up of "warmup_epochs"
    to "lr", then a cosine down to zero at the end of epoch "to_epoch"."""
    lr: float
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float
    parts: list[dict] = field(default_factory=list)

    def at(self, step: int) -> float:
        for part in reversed(self.parts):
            if step >= part["from_step"]:
                return warmup_cosine(part["lr"], step - part["from_step"],
                                     part["to_epoch"] * self.steps_per_epoch - part["from_step"],
                                     warmup_steps(part["warmup_epochs"], self.steps_per_epoch))
        return warmup_cosine(self.lr, step, self.epochs * self.steps_per_epoch,
                             warmup_steps(self.warmup_epochs, self.steps_per_epoch))

    @property
    def end_epoch(self) -> int:
        return self.parts[-1]["to_epoch"] if self.parts else self.epochs

    def state(self) -> dict:
        """What rebuilds it on resuming (the checkpoint's training part)."""
        return {"epochs": self.epochs, "parts": [dict(p) for p in self.parts]}


# A warm-up of fewer steps lets the first updates of a freshly initialised network, at the full rate, throw it far
# off: on 1,600 images (25 steps an epoch) a one-epoch warm-up left a CNN near chance for six epochs.
MIN_WARMUP_STEPS = 100


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """The warm-up's steps: `warmup_epochs` epochs, at least MIN_WARMUP_STEPS (0 epochs: none)."""
    return max(int(warmup_epochs * steps_per_epoch), MIN_WARMUP_STEPS) if warmup_epochs > 0 else 0


def warmup_cosine(lr: float, step: int, total: int, warmup: int) -> float:
    """The rate of `step` of `total`: a linear warm-up over `warmup` steps to `lr`, then cosine decay to zero."""
    # A short run still decays: the warm-up never takes more than a quarter of it.
    warmup = min(warmup, total // 4)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def resumed_schedule(config: TrainConfig, resume: dict, steps_per_epoch: int) -> tuple[LRSchedule, dict | None]:
    """The schedule of a resumed run: the one it trained on (older checkpoints: over their config's --epochs), and
    when --epochs changed since, a part from the step reached to the new end (returned too, else None), as
    --resume-schedule says. "continue": a cosine from the rate reached (the last step's) down to zero, so the rate
    never jumps; "restart": a new cycle over the added epochs, a warm-up to --lr then a cosine to zero."""
    saved = resume["training"].get("schedule") or {"epochs": resume["config"]["epochs"], "parts": []}
    schedule = LRSchedule(config.lr, saved["epochs"], steps_per_epoch, config.warmup_epochs,
                          [dict(p) for p in saved["parts"]])
    reached = resume["epoch"] * steps_per_epoch + resume["training"].get("step", 0)
    if schedule.end_epoch == config.epochs or reached >= config.epochs * steps_per_epoch:
        return schedule, None  # the same schedule (an exact resume), or nothing left to train
    schedule.parts = [p for p in schedule.parts if p["from_step"] < reached]
    restart = config.resume_schedule == "restart"
    part = {"kind": config.resume_schedule, "from_step": reached, "to_epoch": config.epochs,
            "from_epochs": schedule.end_epoch, "rate_reached": schedule.at(max(reached - 1, 0)),
            "warmup_epochs": config.warmup_epochs if restart else 0.0}
    part["lr"] = config.lr if restart else part["rate_reached"]
    schedule.parts.append(part)
    return schedule, part


def describe_schedule_change(part: dict, steps_per_epoch: int, peak_lr: float) -> str:
    """The log line of a resume that changed --epochs: what the learning-rate schedule does now (its rule)."""
    first = part["from_step"] // steps_per_epoch + 1
    where = f"epoch {first}" + (f" step {part['from_step'] % steps_per_epoch + 1}" if part["from_step"] % steps_per_epoch
                                else "")
    change = f"--epochs {part['to_epoch']} (was {part['from_epochs']})"
    if part["kind"] == "restart":
        return (f"{change}: the learning-rate schedule restarts at {where} (the rate reached {part['rate_reached']:.1e}): "
                f"a new cycle, warm-up to {part['lr']:.1e} then cosine to 0 over epochs {first}..{part['to_epoch']} "
                "(--resume-schedule continue: go on from the rate reached instead)")
    line = (f"{change}: the learning-rate schedule continues from the rate reached, {part['lr']:.1e}: a cosine from it "
            f"down to 0 over epochs {first}..{part['to_epoch']} (--resume-schedule restart: a new cycle with warm-up "
            "to --lr instead)")
    if part["lr"] < 0.05 * peak_lr:
        line += f"; that is under 5% of --lr {peak_lr:g} (the schedule had nearly ended): the weights will barely change"
    return line


@dataclass
class TrainData:
    """A run's images (uint8: memory-mapped, or resident on the GPU), labels, files and class names, its split."""
    pixels: np.ndarray | torch.Tensor
    labels: np.ndarray  # (N,) class indices; multi-label: (N, classes) multi-hot tags
    files: list[Path]
    class_names: list[str]
    train_idx: np.ndarray
    val_idx: np.ndarray
    multi_label: bool = False
    skipped: dict[int, str] = field(default_factory=dict)  # --skip-bad: the unreadable images left out, and why
    ids: list[str] = field(default_factory=list)  # the competition's id of each image (LabelledImages.ids)
    id_column: str = "file"  # the name of the labels CSV's id column


@dataclass
class Progress:
    """What a run has done so far; saved in its checkpoints and restored on resuming."""
    history: list[dict] = field(default_factory=list)  # the rows of metrics.csv
    best_val_acc: float = -1.0  # the validation accuracy at the best epoch
    best_epoch: int = 0  # the epoch with the best validation score (by --metric); 0: none yet
    best_val_score: float = math.nan
    train_time: float = 0.0  # seconds of finished epochs


@dataclass
class Session:
    """Everything the loop works with, set up once by `prepare_session`."""
    config: TrainConfig  # named after the run's folder, as config.json and the checkpoints record it
    rt: Runtime
    run_dir: Path
    data: TrainData
    spec: ModelSpec  # what predicts: architecture, classes, input size, normalisation, compute format
    model: nn.Module  # what trains: DistributedDataParallel-wrapped when distributed, compiled with --compile
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    preprocess: data.Preprocess  # with the training augmentation
    schedule: LRSchedule
    loss_fn: nn.Module  # `training_loss`: with --label-smoothing and --balance loss's weights
    mix: data.Mix  # --mixup / --cutmix
    ema: EMA | None = None
    progress: Progress = field(default_factory=Progress)
    dataset_key: str = ""  # fingerprint of the training files and labels (`dataset_key`)
    schedule_change: dict | None = None  # the part a resume that changed --epochs added (`resumed_schedule`)
    recipe: dict = field(default_factory=dict)  # option -> why a new run took the value it did (recipe.py)
    # A new run on a CPU whose epochs the recipe raised for small data: (minutes, the script's epochs): after epoch 2
    # the added epochs stop at what fits the minutes (recipe.cap_added_epochs).
    epoch_cap: tuple[float, int] | None = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved for prediction: the moving average when --ema is on."""
        return self.ema.model if self.ema else self.raw_model

    def file_names(self, indices) -> list[str]:
        """The names of the images `indices`, relative to the data folder (as checkpoints and CSVs hold them)."""
        return [relative_name(self.data.files[i], self.config.data) for i in indices]

    def image_ids(self, indices) -> list[str]:
        """The competition's ids of the images `indices` (as the prediction CSVs key them), else their names."""
        if not self.data.ids:
            return self.file_names(indices)
        return [self.data.ids[i] for i in indices]

    def checkpoint(self, epoch: int, step: int = 0, partial: dict | None = None, resumable: bool = True) -> dict:
        """The checkpoint after `epoch` (and `step` steps of the next one, with its `partial` sums); only a
        `resumable` one (last.pt) holds the optimiser, RNG and training weights."""
        training = None
        if resumable:
            training = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "step": step,
                        "partial": partial or {}, "rng": torch.get_rng_state(), "schedule": self.schedule.state(),
                        "cuda_rng": torch.cuda.get_rng_state(self.rt.device) if self.rt.device.type == "cuda" else None}
            if self.ema:  # resuming needs the trained weights as well as their average
                training["train_model"] = self.raw_model.state_dict()
        p = self.progress
        return make_checkpoint(self.spec, self.eval_model.state_dict(), dataclasses.asdict(self.config), epoch,
                               p.history, p.best_val_acc, p.best_epoch, p.train_time,
                               self.file_names(self.data.val_idx), self.dataset_key, training, p.best_val_score)


def relative_name(path: Path, root: str) -> str:
    """`path` relative to `root`, with forward slashes: cut as a string where `root` begins it (as it does for
    every file found below it), since os.path.relpath costs seconds for 10^5 files."""
    text, prefix = os.fspath(path), _folder_prefix(root)
    if text.startswith(prefix):
        return text[len(prefix):].replace(os.sep, "/")
    return Path(os.path.relpath(path, root)).as_posix()


@functools.lru_cache(maxsize=16)
def _folder_prefix(root: str) -> str:
    return os.path.join(os.fspath(Path(root)), "")


# ----------------------------------------------------------------------------------------------
# The run's folder and images
# ----------------------------------------------------------------------------------------------

def run_dir_for(config: TrainConfig) -> Path:
    """The run's folder: the resumed one, or a new one in --runs-dir (named --name, else <arch>-<date>-<time>),
    which must not hold a run already."""
    if config.resume:
        return Path(config.resume)
    run_dir = Path(config.runs_dir) / (config.name or default_run_name(config.arch))
    if (run_dir / "last.pt").exists():
        raise DataError(f"run folder {run_dir} already holds a run: resume it with --resume {run_dir}, "
                        "or choose another --name")
    return run_dir


class StartClaim:
    """Rank 0's hold on a run folder (its .lock, runs.claim_run_dir), and what it created, so that a start that
    fails leaves no folder behind: only our own start files (START_FILES) and status "running" count as unstarted."""
    START_FILES = {".lock", "config.json", "run.json", "skipped.txt"}

    def __init__(self, run_dir: Path, is_main: bool):
        self.run_dir, self.is_main, self.created, self.claimed = run_dir, is_main, [], False

    def claim(self):
        if not self.is_main:
            return
        self.created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        runs.claim_run_dir(self.run_dir)
        self.claimed = True

    def release(self):
        if self.claimed:
            runs.release_run_dir(self.run_dir)

    def remove_if_unstarted(self):
        if not self.claimed or self.run_dir not in self.created:
            return
        with contextlib.suppress(OSError):  # tidying up never hides the error that stopped the start
            self._remove()

    def _remove(self):
        names = {p.name for p in self.run_dir.iterdir()}
        status = (runs.read_run_info(self.run_dir) or {}).get("status", "running")
        if names <= self.START_FILES and status == "running":
            for name in names:
                (self.run_dir / name).unlink(missing_ok=True)
            self.claimed = False
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()
            table = self.run_dir.parent / "runs.md"  # the runs table beside it listed the run: now it has gone
            with contextlib.suppress(OSError):
                if self.run_dir.parent in self.created:
                    table.unlink(missing_ok=True)
                elif table.is_file():
                    atomic_write_text(table, runs.runs_table(self.run_dir.parent))
            for folder in self.created[1:]:  # the --runs-dir folders made for it
                with contextlib.suppress(OSError):
                    folder.rmdir()


def dataset_key(train_data: TrainData, root: str) -> str:
    """A fingerprint of the training files and their labels: resuming on changed data is noticed. A label is its
    class index (as in runs from before multi-label data), or an image's tags as text."""
    digest = hashlib.sha256()
    for path, label in zip(train_data.files, train_data.labels):
        if train_data.multi_label:
            label = label_text(label, train_data.class_names, True)
        digest.update(f"{relative_name(path, root)}\0{label}\n".encode())
    return digest.hexdigest()[:16]


def check_same_data(resume: dict, train_data: TrainData, config: TrainConfig, key: str):
    """Refuse to resume on data the run's model cannot take (other classes, single- or multi-label, other image
    channels: what its spec fixed; the image size is an option that cannot change), whatever
    --allow-data-change says; and on a dataset whose files changed since the run began (the split would silently
    change), unless --allow-data-change."""
    spec = resume["spec"]
    if spec["class_names"] != train_data.class_names:
        raise DataError(f"--resume: the classes in {config.data} differ from the run's {spec['class_names']}")
    if spec.get("multi_label", False) != train_data.multi_label:
        shape = {True: "multi-label (tags)", False: "single-label"}
        raise DataError(f"--resume: the labels in {config.data} read as {shape[train_data.multi_label]}, the run "
                        f"trained on {shape[not train_data.multi_label]} labels")
    channels = int(train_data.pixels.shape[1])
    if spec["channels"] != channels:
        kind = {1: "gray", 3: "colour"}
        colour = " (some of its images are in colour now)" if channels == 3 else ""
        raise DataError(f"--resume: the images' channels changed: the run trained on {spec['channels']} "
                        f"({kind.get(spec['channels'], '?')}), the images in {config.data} now have {channels} "
                        f"({kind.get(channels, '?')}){colour}; the run's model takes {spec['channels']}-channel "
                        "images and cannot continue on them: resume on the run's images, or train a new run")
    val_files = [relative_name(train_data.files[i], config.data) for i in train_data.val_idx]
    same = val_files == resume["val_files"] and resume.get("dataset_key", key) == key
    if not same and not config.allow_data_change:
        raise DataError(f"--resume: the training images in {config.data} changed since the run began (other files "
                        "or labels), so its training and validation split would change; resume on the same data, or "
                        "pass --allow-data-change to continue on the new split")
    if not same:
        log.warning("--allow-data-change: the dataset changed since the run began; continuing on the new split")


def find_training_images(config: TrainConfig, rt: Runtime) -> data.LabelledImages:
    """The training images and their labels, as the options say (logged on rank 0)."""
    found = data.find_labelled_images(config.data, config.id_col or None, config.label_col or None,
                                      config.labels or None, config.train_dir or None, config.multi_label)
    if rt.is_main:
        log.info(found.summary)
        for note in found.notes:
            log.info(note)
        for warning in found.warnings:
            log.warning("%s", warning)
    check_labels_fit(config, found.multi_label)
    return found


def load_train_data(config: TrainConfig, rt: Runtime, found: data.LabelledImages) -> TrainData:
    """Decode (once, cached) and split the training images `found`; with --skip-bad, leave out unreadable ones
    (`skipped`: recorded in the run's folder once the session is set up)."""
    if config.folds:
        data.check_folds(found.labels, config.folds, found.class_names)  # its warning: `check_folds_fit`, once
    if rt.distributed and not rt.is_main:
        dist.barrier()  # rank 0 decodes and caches first; the others then read its cache
    images = data.load_images(found.files, config.img_size, None, data.cache_dir_for(config.data, config.cache_dir),
                              progress=rt.is_main and config.progress)
    if rt.distributed and rt.is_main:
        dist.barrier()
    if images.bad and not config.skip_bad:
        images.raise_if_bad()
    if config.folds:
        holds_out = data.stratified_folds(found.labels, config.folds, config.seed) == config.fold - 1
        train_idx, val_idx = np.flatnonzero(~holds_out), np.flatnonzero(holds_out)
    else:
        train_idx, val_idx = data.stratified_split(found.labels, config.val_split, config.seed)
    if images.bad:
        train_idx = np.setdiff1d(train_idx, list(images.bad))
        val_idx = np.setdiff1d(val_idx, list(images.bad))
    return TrainData(images.pixels, found.labels, found.files, found.class_names, train_idx, val_idx,
                     found.multi_label, dict(images.bad), found.ids, found.id_column)


def check_batch_size(config: TrainConfig, world_size: int):
    """Each process's share of a training batch holds at least MIN_BATCH images: BatchNorm cannot train on one."""
    if config.batch_size // world_size < MIN_BATCH:
        raise OptionError(f"split among {world_size} processes, a training batch holds fewer than {MIN_BATCH} images "
                          f"per process (BatchNorm needs at least {MIN_BATCH})", option="batch_size",
                          value=config.batch_size, fix=f"raise it to at least {MIN_BATCH * world_size}")


def check_training_split(config: TrainConfig, n_train: int, world_size: int):
    """The training split's batches hold at least MIN_BATCH images per process: a split smaller than a batch is
    one batch of all of it (otherwise the last, smaller batch of an epoch is dropped: count_batches)."""
    if min(n_train, config.batch_size) // world_size >= MIN_BATCH:
        return
    processes = f" for {world_size} processes" if world_size > 1 else ""
    option, value = ("folds", config.folds) if config.folds else ("val_split", f"{config.val_split:g}")
    raise DataError(f"only {n_train} training image(s) after the validation split{processes}: a training batch needs "
                    f"at least {MIN_BATCH} images per process (BatchNorm)", option=option, value=value,
                    fix="more folds, each holding out fewer images, with {flag}, or more images" if config.folds else
                    "hold out fewer images with {flag}, or add images")


def check_folds_fit(config: TrainConfig, rt: Runtime):
    """--folds K, before the first fold is trained: an error when the dataset has fewer images than folds, and one
    warning (rank 0) naming the classes with fewer images than folds (`data.check_folds`)."""
    found = data.find_labelled_images(config.data, config.id_col or None, config.label_col or None,
                                      config.labels or None, config.train_dir or None, config.multi_label)
    warning = data.check_folds(found.labels, config.folds, found.class_names)
    if warning and rt.is_main:
        log.warning("%s", warning)


def check_labels_fit(config: TrainConfig, multi_label: bool):
    """The options that need single-label data (--balance sampler, a metric of one class per image), refused
    before any image is decoded when the labels found are multi-label."""
    data.check_balance(config.balance, multi_label)
    metrics.check_metric(config.metric, multi_label)


def record_skipped(run_dir: Path, files: list, bad: dict[int, str]):
    """--skip-bad: the unreadable images left out, and why, in the run's skipped.txt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "skipped.txt", "".join(f"{files[i]}\t{why}\n" for i, why in sorted(bad.items())))
    log.warning("--skip-bad: left out %d unreadable image(s), listed in %s", len(bad), run_dir / "skipped.txt")


NORM_WEIGHTS, NORM_DATA = "the pretrained weights' own mean/std", "the training images' mean/std"


def norm_source(config: TrainConfig) -> str:
    """Whose mean/std the run normalises with (--normalize, --norm-stats, --pretrained)."""
    if not config.normalize:
        return "none"
    use_weights = config.norm_stats == "weights" or (config.norm_stats == "auto" and bool(config.pretrained))
    return NORM_WEIGHTS if use_weights else NORM_DATA


def normalization(config: TrainConfig, train_data: TrainData, channels: int) -> tuple[list | None, list | None]:
    """The (mean, std) the run normalises with (None, None without --normalize): the pretrained weights' own
    with --pretrained (or --norm-stats weights), else the training images' (--norm-stats data)."""
    if not config.normalize:
        return None, None
    if norm_source(config) == NORM_WEIGHTS:
        if config.arch not in WEIGHTS:
            raise OptionError(f"--norm-stats weights: {config.arch} has no pretrained weights to take it from")
        mean, std = list(WEIGHTS[config.arch].mean), list(WEIGHTS[config.arch].std)
        if channels == 1:  # the stem sums its RGB filters for gray input: the channels' average stands for all
            mean, std = [statistics.fmean(mean)], [statistics.fmean(std)]
        return mean, std
    return data.channel_stats(train_data.pixels, train_data.train_idx)


def class_weights(train_data: TrainData, device: torch.device) -> torch.Tensor:
    """--balance loss: each class's loss weighed by its inverse frequency among the training images, scaled so
    that an image weighs 1 on average."""
    counts = np.bincount(train_data.labels[train_data.train_idx], minlength=len(train_data.class_names))
    weights = len(train_data.train_idx) / (len(counts) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def positive_weights(train_data: TrainData, device: torch.device) -> torch.Tensor:
    """--balance loss on multi-label data: each tag's positives weighed by its negatives / positives among the
    training images (binary cross-entropy's pos_weight), so that a rare tag's presence weighs as much as its
    absence."""
    positives = train_data.labels[train_data.train_idx].sum(0, dtype=np.float64)
    negatives = len(train_data.train_idx) - positives
    # A tag on every image keeps a weight above 0: its positives are all it has to learn from.
    return torch.tensor(np.maximum(negatives, 1) / np.maximum(positives, 1), dtype=torch.float32, device=device)


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy of each tag's logit against its (soft) multi-hot target, the mean over images and tags.
    Label smoothing `smoothing` = e pulls every target towards 1/2: target * (1 - e) + e / 2; `pos_weight`
    (per tag) weighs the positives."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing, self.pos_weight = smoothing, pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float() * (1 - self.smoothing) + self.smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=self.pos_weight)


def training_loss(config: TrainConfig, train_data: TrainData, device: torch.device) -> nn.Module:
    """The loss that trains: cross-entropy over the classes, or a binary cross-entropy per tag (multi-label), with
    --label-smoothing, and --balance loss's class weights (multi-label: each tag's positive weight)."""
    balance = config.balance == "loss"
    if train_data.multi_label:
        return MultiLabelLoss(config.label_smoothing, positive_weights(train_data, device) if balance else None)
    return nn.CrossEntropyLoss(weight=class_weights(train_data, device) if balance else None,
                               label_smoothing=config.label_smoothing)


# ----------------------------------------------------------------------------------------------
# The model and what trains it
# ----------------------------------------------------------------------------------------------

def build_network(config: TrainConfig, classes: int, channels: int, pretrained: str | bool) -> nn.Module:
    """The architecture of `config` for `classes` classes and `channels` input channels at --img-size, from the
    `pretrained` weights (falsy: none), checked on a batch of that size. The models state facts: an error that
    names no option gains here the flags it is about."""
    try:
        model = build_model(config.arch, classes, channels, config.img_size, pretrained=pretrained,
                            **model_options(config))
    except UsageError:
        raise  # it names its option (WeightsError: --pretrained), which the command line spells
    except ValueError as e:  # e.g. no published weights for these settings
        raise OptionError(f"{config.arch} with --img-size {config.img_size}{' --pretrained' if config.pretrained else ''}: "
                          f"{e}") from None
    except RuntimeError as e:  # e.g. published weights that do not fit
        raise SetupError(str(e)) from None
    check_input_size(model, config, channels)
    return model


def check_input_size(model: nn.Module, config: TrainConfig, channels: int):
    """A clear error when the model cannot take images of --img-size (too small for its downsampling)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, channels, config.img_size, config.img_size))
    except RuntimeError as e:
        raise OptionError(f"--img-size {config.img_size} is too small for {config.arch}: "
                          f"{str(e).splitlines()[0]}") from None


def is_head(name: str, arch: str) -> bool:
    return name.startswith(head_name(arch) + ".")


def freeze_backbone(s: Session, frozen: bool):
    """With --freeze-epochs: only the classifier layer trains while `frozen`."""
    for name, p in s.raw_model.named_parameters():
        if not is_head(name, s.config.arch):
            p.requires_grad_(not frozen)


def build_optimizer(model: nn.Module, config: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or SGD; biases and norms are not decayed. With --head-lr-mult the classifier layer's groups carry
    an `lr_scale`, which the loop applies to the scheduled learning rate. `fused` (on CUDA): one kernel for the
    whole update instead of several per parameter."""
    named = list(model.named_parameters())
    parts = [("", named)] if config.head_lr_mult == 1 else [
        ("backbone", [(n, p) for n, p in named if not is_head(n, config.arch)]),
        ("head", [(n, p) for n, p in named if is_head(n, config.arch)])]
    groups = []
    for part, params in parts:
        scale = config.head_lr_mult if part == "head" else 1.0
        groups += [{"params": [p for _, p in params if p.ndim > 1], "weight_decay": config.weight_decay, "lr_scale": scale},
                   {"params": [p for _, p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True, fused=fused or None)
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)


def wrap_model(model: nn.Module, config: TrainConfig, rt: Runtime) -> nn.Module:
    """What trains: `model` wrapped for torchrun (DistributedDataParallel) and compiled with --compile."""
    if rt.distributed:
        # A frozen backbone produces no gradients: DDP must not wait for them.
        model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda"
                                                    else None, find_unused_parameters=config.freeze_epochs > 0)
    return compile_model(model, rt) if config.compile else model


# ----------------------------------------------------------------------------------------------
# Setting up
# ----------------------------------------------------------------------------------------------

def prepare_session(config: TrainConfig, rt: Runtime, run_dir: Path | None = None,
                    follow_data: frozenset = frozenset()) -> tuple[Session, dict | None, dict | None]:
    """Load the data, build the model and optimiser, choose the compute format, and restore a resumed run; nothing
    is written in the run's folder (the trainer records the start, and `record_skipped`). A new run's --img-size 0
    and the options in `follow_data` (of config.FOLLOW_DATA: not given on the command line) are chosen for the data
    (recipe.py; the reasons in `Session.recipe`). Returns the session, the resumed checkpoint (None for a new run)
    and how the compute format was chosen (None when resumed: the run keeps its format)."""
    torch.manual_seed(config.seed)
    resume = None
    if config.resume:
        resume = load_resumable(Path(config.resume) / "last.pt", config.arch, config.img_size, model_options(config))
    run_dir = run_dir or run_dir_for(config)
    config = dataclasses.replace(config, name=run_dir.name)  # the name config.json and the checkpoints record
    found = find_training_images(config, rt)
    config, reasons = choose_image_size(config, found, rt)
    train_data = load_train_data(config, rt, found)
    script_epochs, cap = config.epochs, None
    if not resume:
        plan = recipe.fit_schedule(config, len(train_data.train_idx), rt.world_size, set(follow_data))
        config, reasons = recipe.apply_plan(config, plan), {**reasons, **plan.reasons}
        if "epochs" in plan.reasons and rt.device.type == "cpu":
            cap = (recipe.CPU_ADDED_EPOCHS_MINUTES, script_epochs)
        config, reasons = layout_for_data(config, train_data, follow_data, reasons)
    check_batch_size(config, rt.world_size)
    check_training_split(config, len(train_data.train_idx), rt.world_size)
    if rt.is_main:
        warn_small_validation(train_data, config)
    channels = int(train_data.pixels.shape[1])
    key = dataset_key(train_data, config.data)
    if resume:
        check_same_data(resume, train_data, config, key)
    mean, std = (resume["spec"]["mean"], resume["spec"]["std"]) if resume else normalization(config, train_data, channels)
    train_data.pixels = data.resident(train_data.pixels, rt.device)
    model = build_network(config, len(train_data.class_names), channels, config.pretrained if not resume else False)
    if config.init and not resume:
        init_from_checkpoint(model, config.init, config.arch)
    model.to(rt.device)
    if resume:
        compute, choice = ComputeFormat(**resume["spec"]["compute"]), None
    else:
        compute, choice = measured_format(config, rt, model, train_data, data.Preprocess(mean, std))
    model.to(memory_format=compute.memory_format)
    spec = ModelSpec(config.arch, list(train_data.class_names), config.img_size, channels, mean, std, compute,
                     config.hflip, train_data.multi_label, resume["spec"].get("thresholds") if resume else None,
                     model_options(config), config.dihedral)
    if config.time_budget and not resume:
        config, reasons = plan_budget(config, rt, choice, model, train_data, data.Preprocess(mean, std), reasons)
    s = assemble_session(config, rt, run_dir, train_data, spec, model, key)
    s.recipe, s.epoch_cap = reasons, cap
    if resume:
        restore_run(s, resume)
        s.schedule, s.schedule_change = resumed_schedule(config, resume, s.schedule.steps_per_epoch)
    return s, resume, choice


def layout_for_data(config: TrainConfig, train_data: TrainData, follow_data: frozenset,
                    reasons: dict) -> tuple[TrainConfig, dict]:
    """A new run's orientations, shifts and (the CNN's) head pooling where not given: as the training images'
    layout suggests (recipe.layout_stats), with the reasons added to `reasons`."""
    auto = set(follow_data) & {"dihedral", "translate"} | ({"head_pool"} & follow_data if config.arch == "cnn" else set())
    if not auto or len(train_data.train_idx) < 2:
        return config, reasons
    layout = recipe.layout_stats(train_data.pixels, train_data.train_idx)
    dihedral, translate, why = recipe.choose_augmentation(config.dihedral, config.translate, config.img_size, layout,
                                                          auto)
    head_pool, why_head = recipe.choose_head_pool(config.head_pool, layout, auto)
    config = dataclasses.replace(config, dihedral=dihedral, translate=translate, head_pool=head_pool)
    return config, {**reasons, **why, **why_head}


def model_options(config: TrainConfig) -> dict:
    """The options of `config` its architecture's builder takes (models.MODEL_OPTIONS), as the checkpoint records
    them."""
    return {name: getattr(config, name) for name, arch in MODEL_OPTIONS.items() if arch == config.arch}


# Fewer validation images of a class than this make its share of the validation score noise.
MIN_VAL_PER_CLASS = 5


def warn_small_validation(train_data: TrainData, config: TrainConfig):
    """A warning naming the classes with fewer than MIN_VAL_PER_CLASS validation images (single-label)."""
    if train_data.multi_label or not len(train_data.val_idx):
        return
    counts = np.bincount(train_data.labels[train_data.val_idx], minlength=len(train_data.class_names))
    few = [f"{train_data.class_names[k]} ({counts[k]})" for k in np.argsort(counts, kind="stable")
           if counts[k] < MIN_VAL_PER_CLASS]
    if few:
        advice = "" if config.folds else "; k-fold (--folds 5) validates on every image once"
        log.warning("the validation split holds fewer than %d images of %s: the score on %s is mostly noise%s",
                    MIN_VAL_PER_CLASS, ", ".join(few[:5]) + (", ..." if len(few) > 5 else ""),
                    "it" if len(few) == 1 else "them", advice)


def choose_image_size(config: TrainConfig, found: data.LabelledImages, rt: Runtime) -> tuple[TrainConfig, dict]:
    """A new run's --img-size 0: the size the training images suggest (recipe.choose_img_size), and why."""
    if config.img_size:
        return config, {}
    size, why = recipe.choose_img_size(found.files, config.max_img_size, rt.device.type, config.arch, MIN_IMG_SIZE)
    return dataclasses.replace(config, img_size=size), {"img_size": why}


def plan_budget(config: TrainConfig, rt: Runtime, choice: dict, model: nn.Module, train_data: TrainData,
                preprocess: data.Preprocess, reasons: dict) -> tuple[TrainConfig, dict]:
    """--time-budget: the epochs that fit it, from the step time the compute-format trial measured (or a few steps
    timed here when the format was fixed or remembered without one), and why."""
    step_s = (choice or {}).get("step_s") or time_steps(config, rt, model, train_data, preprocess)
    steps = data.count_batches(len(train_data.train_idx), config.batch_size, drop_last=True)
    epochs, why = recipe.budget_epochs(config.time_budget * 60, seconds_since_start(), step_s, steps,
                                       len(train_data.val_idx), config.batch_size)
    return dataclasses.replace(config, epochs=epochs), {**reasons, "epochs": why}


def time_steps(config: TrainConfig, rt: Runtime, model: nn.Module, train_data: TrainData,
               preprocess: data.Preprocess, steps: int = 3) -> float:
    """Seconds of one training step of a copy of `model` (the median of `steps` after one untimed)."""
    x, y = first_batch(config, rt, train_data)
    times = measure_formats(model, preprocess(x), y, [ComputeFormat(config.precision if config.precision != "auto"
                                                                   else "fp32", config.channels_last == "on")],
                            rt.device, warmup=1, min_steps=steps, max_steps=steps)
    return next(iter(times.values()))


def first_batch(config: TrainConfig, rt: Runtime, train_data: TrainData) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's first training batch (its labels as floats for multi-label data: soft targets, BCE's cost)."""
    x, y = next(data.batches(train_data.pixels, train_data.labels, train_data.train_idx,
                             config.batch_size // rt.world_size, rt.device, shuffle=True, seed=config.seed))
    return x, (y.float() if train_data.multi_label else y)


def measured_format(config: TrainConfig, rt: Runtime, model: nn.Module, train_data: TrainData,
                    preprocess: data.Preprocess) -> tuple[ComputeFormat, dict]:
    """The compute format --precision and --channels-last allow, measured on the run's first batch where they say
    auto; and how it was chosen."""
    x, y = first_batch(config, rt, train_data)
    steps = config.epochs * data.count_batches(len(train_data.train_idx), config.batch_size, drop_last=True)
    return choose_format(config.precision, config.channels_last, model, preprocess(x), y, rt, arch=config.arch,
                         run_steps=0 if config.time_budget else steps)


def assemble_session(config: TrainConfig, rt: Runtime, run_dir: Path, train_data: TrainData, spec: ModelSpec,
                     model: nn.Module, key: str) -> Session:
    """The session around `model` (on its device, in its memory format): its optimiser, loss scaler, wrapper,
    augmentation, schedule, loss, MixUp/CutMix and EMA."""
    optimizer = build_optimizer(model, config, fused=rt.device.type == "cuda")
    scaler = torch.amp.GradScaler(rt.device.type, enabled=spec.compute.precision == "fp16")  # a no-op unless fp16
    wrapped = wrap_model(model, config, rt)
    augment = data.Augment(hflip=config.hflip, rotate=config.rotate, translate=config.translate, erase=config.erase,
                           dihedral=config.dihedral)
    schedule = LRSchedule(config.lr, config.epochs,
                          data.count_batches(len(train_data.train_idx), config.batch_size, drop_last=True),
                          config.warmup_epochs)
    return Session(config, rt, run_dir, train_data, spec, wrapped, model, optimizer, scaler,
                   data.Preprocess(spec.mean, spec.std, augment, spec.compute.memory_format), schedule,
                   training_loss(config, train_data, rt.device),
                   data.Mix(config.mixup, config.cutmix), EMA(model, config.ema) if config.ema else None,
                   dataset_key=key)


def restore_run(s: Session, resume: dict):
    """Continue the run of the checkpoint `resume` (its last.pt): the trained weights, their moving average, the
    optimiser and loss scaler as it saved them, and what it had done."""
    training, path = resume["training"], Path(s.config.resume) / "last.pt"
    model = f"{describe_spec(s.spec)} (the run's, on its data)"
    load_weights(s.raw_model, training.get("train_model", resume["model"]), path, model)
    if s.ema:
        load_weights(s.ema.model, resume["model"], path, model, "its weights' moving average")
    try:
        s.optimizer.load_state_dict(training["optimizer"])
        s.scaler.load_state_dict(training["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:  # state of another model or optimiser
        raise DataError(f"{path}: its optimiser state does not fit the run's model and optimiser "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    s.progress = Progress(history=resume["history"], best_val_acc=resume["best_val_acc"],
                          best_epoch=resume["best_epoch"], train_time=resume["train_time"],
                          best_val_score=resume.get("best_val_score", resume["best_val_acc"]))
