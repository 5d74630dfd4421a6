"""The one training loop: setting up a session (data, model, optimiser, compute format, a resumed state),
training epochs, evaluating, and saving checkpoints. Each train_<arch>.py only sets its defaults and calls
`main`; options live in config.py, the device and precision choice in runtime.py, the checkpoint format in
checkpoint.py, metrics and the runs table in runs.py.

    python train_cnn.py --data data/fashion-mnist                 # train (see README for each architecture)
    python train_cnn.py --resume runs/cnn-20260101-120000 --epochs 30   # continue, possibly for longer
    torchrun --nproc_per_node 2 train_cnn.py --data DIR            # data-parallel on 2 processes
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import data
import metrics
import runs
from checkpoint import ModelSpec, init_from_checkpoint, load_checkpoint, make_checkpoint, save_checkpoint
from config import TrainConfig, parse_config, save_config
from errors import DataError, OptionError, SetupError, UsageError, explain
from fileio import atomic_write_text
from models import WEIGHTS, WeightsError, build_model, head_name
from runtime import (ComputeFormat, Runtime, all_reduce, any_process, choose_format, compile_model, cuda_graphs,
                     no_autotune, seconds_since_start, setup_runtime)

log = logging.getLogger("imgcomp")


# ----------------------------------------------------------------------------------------------
# What the loop works with
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
class LRSchedule:
    """Linear warm-up, then cosine decay to zero, over every step of the run."""
    lr: float
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float

    def at(self, step: int) -> float:
        total = self.epochs * self.steps_per_epoch
        # A short run still decays: the warm-up never takes more than a quarter of it.
        warmup = min(int(self.warmup_epochs * self.steps_per_epoch), total // 4)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainData:
    """A run's images (uint8: memory-mapped, or resident on the GPU), labels, files and class names, its split."""
    pixels: np.ndarray | torch.Tensor
    labels: np.ndarray
    files: list[Path]
    class_names: list[str]
    train_idx: np.ndarray
    val_idx: np.ndarray


@dataclass
class Progress:
    """What a run has done so far; saved in its checkpoints and restored on resuming."""
    history: list[dict] = field(default_factory=list)  # the rows of metrics.csv
    best_val_acc: float = -1.0  # the validation accuracy at the best epoch
    best_epoch: int = 0  # the epoch with the best validation score (by --metric); 0: none yet
    best_val_score: float = math.nan
    train_time: float = 0.0  # seconds of finished epochs


@dataclass
class EpochResult:
    """An epoch's summed training metrics (over every process); `stopped_at` is the step reached when a stop
    was requested before the epoch's end, else None."""
    loss_sum: float
    correct: float
    seen: float
    seconds: float
    lr: float
    stopped_at: int | None = None

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)


@dataclass
class Session:
    """Everything the loop works with, set up once by `prepare_session`."""
    config: TrainConfig
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
    loss_fn: nn.Module  # cross-entropy with --label-smoothing and --balance loss's class weights
    mix: data.Mix  # --mixup / --cutmix
    ema: EMA | None = None
    progress: Progress = field(default_factory=Progress)
    dataset_key: str = ""  # fingerprint of the training files and labels (`dataset_key`)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved for prediction: the moving average when --ema is on."""
        return self.ema.model if self.ema else self.raw_model

    def checkpoint(self, epoch: int, step: int = 0, partial: dict | None = None, resumable: bool = True) -> dict:
        """The checkpoint after `epoch` (and `step` steps of the next one, with its `partial` sums); only a
        `resumable` one (last.pt) holds the optimiser, RNG and training weights."""
        training = None
        if resumable:
            training = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "step": step,
                        "partial": partial or {}, "rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(self.rt.device) if self.rt.device.type == "cuda" else None}
            if self.ema:  # resuming needs the trained weights as well as their average
                training["train_model"] = self.raw_model.state_dict()
        p = self.progress
        return make_checkpoint(self.spec, self.eval_model.state_dict(), dataclasses.asdict(self.config), epoch,
                               p.history, p.best_val_acc, p.best_epoch, p.train_time,
                               [_rel(self.data.files[i], self.config.data) for i in self.data.val_idx],
                               self.dataset_key, training, p.best_val_score)


def _rel(path: Path, root: str) -> str:
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
# Setting up
# ----------------------------------------------------------------------------------------------

def run_dir_for(config: TrainConfig) -> Path:
    """The run's folder: the resumed one, or a new one in --runs-dir (named --name, else <arch>-<date>-<time>),
    which must not hold a run already."""
    if config.resume:
        return Path(config.resume)
    run_dir = Path(config.runs_dir) / (config.name or f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / "last.pt").exists():
        raise DataError(f"run folder {run_dir} already holds a run: resume it with --resume {run_dir}, "
                        "or choose another --name")
    return run_dir


def dataset_key(train_data: TrainData, root: str) -> str:
    """A fingerprint of the training files and their labels: resuming on changed data is noticed."""
    digest = hashlib.sha256()
    for path, label in zip(train_data.files, train_data.labels):
        digest.update(f"{_rel(path, root)}\0{label}\n".encode())
    return digest.hexdigest()[:16]


def check_same_data(resume: dict, train_data: TrainData, config: TrainConfig, key: str):
    """Refuse to resume on a dataset whose files changed since the run began (the split would silently
    change), unless --allow-data-change."""
    if resume["spec"]["class_names"] != train_data.class_names:
        raise DataError(f"--resume: the classes in {config.data} differ from the run's {resume['spec']['class_names']}")
    val_files = [_rel(train_data.files[i], config.data) for i in train_data.val_idx]
    same = val_files == resume["val_files"] and resume.get("dataset_key", key) == key
    if not same and not config.allow_data_change:
        raise DataError(f"--resume: the training images in {config.data} changed since the run began (other files "
                        "or labels), so its training and validation split would change; resume on the same data, or "
                        "pass --allow-data-change to continue on the new split")
    if not same:
        log.warning("--allow-data-change: the dataset changed since the run began; continuing on the new split")


def check_input_size(model: nn.Module, config: TrainConfig, channels: int):
    """A clear error when the model cannot take images of --img-size (too small for its downsampling)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, channels, config.img_size, config.img_size))
    except RuntimeError as e:
        raise OptionError(f"--img-size {config.img_size} is too small for {config.arch}: "
                          f"{str(e).splitlines()[0]}") from None


def load_train_data(config: TrainConfig, rt: Runtime, run_dir: Path) -> TrainData:
    """Find, decode (once, cached) and split the training images; with --skip-bad, leave out unreadable ones."""
    found = data.find_labelled_images(config.data, config.id_col or None, config.label_col or None)
    if rt.is_main:
        for note in found.notes:
            log.info(note)
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
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "skipped.txt").write_text("".join(f"{images.files[i]}\t{why}\n" for i, why in sorted(images.bad.items())))
            log.warning("--skip-bad: left out %d unreadable image(s), listed in %s", len(images.bad), run_dir / "skipped.txt")
    if len(train_idx) < 2:
        raise DataError(f"only {len(train_idx)} training image(s) after the validation split")
    return TrainData(images.pixels, found.labels, found.files, found.class_names, train_idx, val_idx)


def is_head(name: str, arch: str) -> bool:
    return name.startswith(head_name(arch) + ".")


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


def prepare_session(config: TrainConfig, rt: Runtime, run_dir: Path | None = None) -> tuple[Session, dict | None, dict | None]:
    """Load the data, build the model and optimiser, choose the compute format, and restore a resumed run.
    Returns the session, the resumed checkpoint (None for a new run) and how the compute format was
    chosen (None when resumed: the run keeps its format)."""
    torch.manual_seed(config.seed)
    resume = load_checkpoint(Path(config.resume) / "last.pt") if config.resume else None
    run_dir = run_dir or run_dir_for(config)
    config.name = run_dir.name
    train_data = load_train_data(config, rt, run_dir)
    channels = int(train_data.pixels.shape[1])
    key = dataset_key(train_data, config.data)
    if resume:
        check_same_data(resume, train_data, config, key)
    local_batch = config.batch_size // rt.world_size
    if local_batch < 1:
        raise DataError(f"--batch-size {config.batch_size} is smaller than the number of processes ({rt.world_size})")
    if resume:
        mean, std = resume["spec"]["mean"], resume["spec"]["std"]
    else:
        mean, std = normalization(config, train_data, channels)
    train_data.pixels = data.resident(train_data.pixels, rt.device)
    try:
        model = build_model(config.arch, len(train_data.class_names), channels, config.img_size,
                            pretrained=config.pretrained if not resume else False)
    except WeightsError as e:  # a local weight file that cannot be read or does not fit
        raise DataError(str(e)) from None
    except ValueError as e:  # e.g. an --img-size the architecture cannot take, no such weights
        raise OptionError(f"{config.arch} with --img-size {config.img_size}{' --pretrained' if config.pretrained else ''}: "
                          f"{e}") from None
    except RuntimeError as e:  # e.g. pretrained weights that cannot be fetched offline
        raise SetupError(str(e)) from None
    check_input_size(model, config, channels)
    if config.init and not resume:
        init_from_checkpoint(model, config.init, config.arch)
    model.to(rt.device)
    choice = None
    if resume:
        model.load_state_dict(resume["training"].get("train_model", resume["model"]))
        compute = ComputeFormat(**resume["spec"]["compute"])
    else:
        x, y = next(data.batches(train_data.pixels, train_data.labels, train_data.train_idx, local_batch, rt.device,
                                 shuffle=True, seed=config.seed))
        compute, choice = choose_format(config.precision, config.channels_last, model,
                                        data.Preprocess(mean, std)(x), y, rt, arch=config.arch)
    model.to(memory_format=compute.memory_format)

    optimizer = build_optimizer(model, config, fused=rt.device.type == "cuda")
    scaler = torch.amp.GradScaler(rt.device.type, enabled=compute.precision == "fp16")
    # A frozen backbone produces no gradients: DDP must not wait for them.
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                                  find_unused_parameters=config.freeze_epochs > 0) \
        if rt.distributed else model
    if config.compile:
        wrapped = compile_model(wrapped, rt)
    spec = ModelSpec(config.arch, list(train_data.class_names), config.img_size, channels, mean, std, compute,
                     config.hflip)
    augment = data.Augment(hflip=config.hflip, rotate=config.rotate, translate=config.translate, erase=config.erase)
    schedule = LRSchedule(config.lr, config.epochs,
                          data.count_batches(len(train_data.train_idx), config.batch_size, drop_last=True),
                          config.warmup_epochs)
    s = Session(config, rt, run_dir, train_data, spec, wrapped, model, optimizer, scaler,
                data.Preprocess(mean, std, augment, compute.memory_format), schedule,
                nn.CrossEntropyLoss(weight=class_weights(train_data, rt.device) if config.balance == "loss" else None,
                                    label_smoothing=config.label_smoothing),
                data.Mix(config.mixup, config.cutmix),
                EMA(model, config.ema) if config.ema else None, dataset_key=key)
    if resume:
        if s.ema:
            s.ema.model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["training"]["optimizer"])
        scaler.load_state_dict(resume["training"]["scaler"])
        s.progress = Progress(history=resume["history"], best_val_acc=resume["best_val_acc"],
                              best_epoch=resume["best_epoch"], train_time=resume["train_time"],
                              best_val_score=resume.get("best_val_score", resume["best_val_acc"]))
    return s, resume, choice


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

class DeviceSums:
    """Loss and correct-prediction sums of this process's batches, added up on the device, and their image
    count on the host. Reading them waits for the device; `peek` does not: it starts a copy to the host and
    returns the latest copy that has arrived (on the CPU, the current sums), so progress and the divergence
    check never stall the queue of work on a GPU."""

    def __init__(self, device: torch.device, loss_sum: float = 0.0, correct: float = 0.0, seen: int = 0):
        self.base = (loss_sum, correct, seen)  # an interrupted part of the epoch, already on the host
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)
        self.seen = 0
        self._async = device.type == "cuda"
        self._host = torch.zeros(2, dtype=torch.float64, pin_memory=self._async)
        self._copy: tuple[torch.cuda.Event, int] | None = None  # a copy under way, and the count it holds
        self._latest = self.base

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, n: int):
        self.sums += torch.stack([loss_sum.double(), correct.double()])
        self.seen += n

    def _with_base(self, values, seen: int) -> tuple[float, float, int]:
        return values[0] + self.base[0], values[1] + self.base[1], seen + self.base[2]

    def peek(self) -> tuple[float, float, int]:
        """(loss sum, correct, seen) as of a recent batch, without waiting for the device."""
        if self._copy is not None and self._copy[0].query():
            self._latest, self._copy = self._with_base(self._host.tolist(), self._copy[1]), None
        if self._copy is None:
            self._host.copy_(self.sums, non_blocking=self._async)
            if self._async:
                self._copy = (torch.cuda.Event(), self.seen)
                self._copy[0].record()
            else:
                self._latest = self._with_base(self._host.tolist(), self.seen)
        return self._latest

    def total(self) -> list[float]:
        """(loss sum, correct, seen) of every batch so far; waits for the device."""
        return list(self._with_base(self.sums.tolist(), self.seen))


def train_one_epoch(s: Session, epoch: int, stop: StopRequest, start_step: int = 0, partial: dict | None = None,
                    stop_step: int | None = None) -> EpochResult:
    """One epoch of training (epochs count from 1), from `start_step` (with the `partial` sums of its
    interrupted part) up to `stop_step` (default: the whole epoch; the benchmarks time its first steps).
    Stops early, with `stopped_at` set, when a stop is requested."""
    cfg, rt = s.config, s.rt
    steps = s.schedule.steps_per_epoch if stop_step is None else min(stop_step, s.schedule.steps_per_epoch)
    s.model.train()
    # The interrupted part of this epoch (summed over processes when saved) counts once: on rank 0.
    sums = DeviceSums(rt.device, *((partial["loss_sum"], partial["correct"], partial["seen"]) if partial and rt.is_main
                                   else ()))
    graphs = cfg.compile and cuda_graphs(rt)  # the compiled model replays CUDA graphs: mark each step
    seconds = partial["seconds"] if partial else 0.0
    batches = data.batches(s.data.pixels, s.data.labels, s.data.train_idx, cfg.batch_size, rt.device, shuffle=True,
                           seed=cfg.seed, epoch=epoch, drop_last=True, start_step=start_step, stop_step=steps,
                           rank=rt.rank, world_size=rt.world_size, balance=cfg.balance == "sampler")
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
               disable=not (rt.is_main and cfg.progress), leave=False, dynamic_ncols=True)
    compute, classes = s.spec.compute, len(s.spec.class_names)
    start = time.perf_counter()
    lr = s.optimizer.param_groups[0]["lr"]
    for step, (x, y) in enumerate(batches, start=start_step):
        lr = s.schedule.at((epoch - 1) * s.schedule.steps_per_epoch + step)
        for group in s.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x = s.preprocess(x, train=True)
        targets = y
        if s.mix.active:  # soft targets; accuracy counts the label that weighs most in each mixed image
            x, targets, y = s.mix(x, y, classes)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with compute.autocast(rt.device):
            logits = s.model(x)
            loss = s.loss_fn(logits, targets)
        s.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)
        if s.ema:
            s.ema.update((epoch - 1) * s.schedule.steps_per_epoch + step)
        sums.add(loss.detach() * len(y), (logits.argmax(1) == y).sum(), len(y))
        bar.update()
        last = step + 1 == steps
        if step % 10 == 0 or last:
            loss_sum, correct, seen = sums.peek()  # a few steps behind on a GPU: it does not wait for it
            if not math.isfinite(loss_sum):
                raise Diverged(f"the training loss became {loss_sum} by epoch {epoch}, step {step + 1}")
            elapsed = seconds + time.perf_counter() - start
            if seen:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                                img_s=f"{seen * rt.world_size / max(elapsed, 1e-9):.0f}", refresh=False)
        # Across processes the stop request is agreed every 10 steps (an all-reduce waits for the device).
        if not last and (stop.requested if not rt.distributed else step % 10 == 0 and any_process(stop.requested, rt)):
            bar.close()
            return EpochResult(*all_reduce(sums.total(), rt), seconds + time.perf_counter() - start, lr,
                               stopped_at=step + 1)
    bar.close()
    loss_sum, correct, seen = all_reduce(sums.total(), rt)
    if not math.isfinite(loss_sum):
        raise Diverged(f"the training loss became {loss_sum} at epoch {epoch}")
    return EpochResult(loss_sum, correct, seen, seconds + time.perf_counter() - start, lr)


@torch.no_grad()
def evaluate(s: Session, indices: np.ndarray) -> dict:
    """Loss, accuracy and the --metric's score on `indices` (no augmentation), over all processes; and the
    class probabilities of those images, in the order of `indices` sorted ("indices", "probs")."""
    if len(indices) == 0:
        return {"loss": math.nan, "acc": math.nan, "score": math.nan}
    model = s.eval_model.eval()
    device = s.rt.device
    labels = torch.from_numpy(s.data.labels).to(device)
    sums = DeviceSums(device)
    seen_idx, seen_probs = [], []
    with no_autotune():  # its batch shapes are not the training step's: tuning them would not pay
        for x, idx in data.batches(s.data.pixels, None, indices, s.config.batch_size * 2, device,
                                   rank=s.rt.rank, world_size=s.rt.world_size):
            if len(idx) == 0:
                continue
            y = labels[idx]
            with s.spec.compute.autocast(device):
                logits = model(s.preprocess(x)).float()  # no DDP forward: ranks may have uneven batches
            sums.add(torch.nn.functional.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum(),
                     len(y))
            seen_idx.append(idx)
            seen_probs.append(logits.softmax(1))
    loss_sum, correct, seen = all_reduce(sums.total(), s.rt)
    idx = torch.cat(seen_idx).cpu().numpy() if seen_idx else np.zeros(0, np.int64)
    probs = torch.cat(seen_probs).double().cpu().numpy() if seen_probs else np.zeros((0, len(s.spec.class_names)))
    if s.rt.distributed:
        parts = [None] * s.rt.world_size
        dist.all_gather_object(parts, (idx, probs))
        idx, probs = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.argsort(idx)
    idx, probs = idx[order], probs[order]
    return {"loss": loss_sum / seen, "acc": correct / seen, "indices": idx, "probs": probs,
            "score": metrics.score(s.config.metric, probs, s.data.labels[idx]) if np.isfinite(probs).all() else math.nan}


def train(config: TrainConfig, script_defaults: dict | None = None) -> Path:
    """Train a model as `config` says; returns the run folder. `script_defaults` (those of the train_<arch>.py
    that runs it) are recorded in run.json, so that the runs table can write the run's command."""
    rt = setup_runtime(config.device, config.deterministic, config.cudnn_benchmark)
    logging.basicConfig(level=logging.INFO if rt.is_main else logging.WARNING, format="%(message)s", stream=sys.stdout,
                        force=True)
    try:
        return _train(config, rt, script_defaults or {})
    finally:
        if rt.distributed:
            dist.destroy_process_group()


def _train(config: TrainConfig, rt: Runtime, script_defaults: dict) -> Path:
    run_dir = run_dir_for(config)
    if not rt.is_main:
        return _train_in(config, rt, script_defaults, run_dir)
    runs.claim_run_dir(run_dir)
    try:
        return _train_in(config, rt, script_defaults, run_dir)
    finally:
        runs.release_run_dir(run_dir)


def non_finite(model: nn.Module) -> list[str]:
    """Names of the model's weights and buffers that hold NaN or infinity."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]


def _train_in(config: TrainConfig, rt: Runtime, script_defaults: dict, run_dir: Path) -> Path:
    s, resume, choice = prepare_session(config, rt, run_dir)
    progress = s.progress
    start_epoch = resume["epoch"] + 1 if resume else 1
    start_step, partial = (resume["training"].get("step", 0), resume["training"].get("partial")) if resume else (0, None)
    if start_step >= s.schedule.steps_per_epoch:
        start_step, partial = 0, None
    if rt.is_main:
        ready = round(seconds_since_start(), 1)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir)
        runs.update_run_info(run_dir, name=run_dir.name, arch=config.arch, epochs=config.epochs,
                             epochs_done=start_epoch - 1, batch_size=config.batch_size, img_size=config.img_size,
                             mode=str(s.spec.compute), status="running",
                             best_val_acc=progress.best_val_acc if progress.best_epoch else None, metric=config.metric,
                             train_time=progress.train_time, script_defaults=script_defaults,
                             startup_s=ready, **({"mode_choice": choice} if choice else {}))
        log.info("%s: %s on %s, %d classes, %d train / %d val images of %dx%dx%d, %s, %d epochs -> %s (ready %.1f s "
                 "after start)", "resuming" if resume else "training", config.arch, rt.device, len(s.spec.class_names),
                 len(s.data.train_idx), len(s.data.val_idx), s.spec.channels, config.img_size, config.img_size,
                 s.spec.compute, config.epochs, run_dir, ready)
        if config.pretrained or config.head_lr_mult != 1 or config.freeze_epochs:
            log.info("fine-tuning: weights %s; normalisation with %s (mean %s, std %s); the classifier (%s) at %gx "
                     "the learning rate; the backbone frozen for the first %d epoch(s)", config.pretrained or "random",
                     norm_source(config), s.spec.mean, s.spec.std, head_name(config.arch), config.head_lr_mult,
                     config.freeze_epochs)
    if start_epoch > config.epochs:
        log.info("the run already has %d epochs; raise --epochs to train longer", config.epochs)
    epoch = start_epoch - 1
    with StopRequest() as stop:
        try:
            for epoch in range(start_epoch, config.epochs + 1):
                if start_step and resume and resume["training"].get("rng") is not None:  # continue mid-epoch exactly
                    torch.set_rng_state(resume["training"]["rng"])
                    if resume["training"].get("cuda_rng") is not None:
                        torch.cuda.set_rng_state(resume["training"]["cuda_rng"], rt.device)
                else:  # each epoch's randomness depends only on (seed, epoch), so resuming repeats it
                    torch.manual_seed(config.seed * 100_003 + epoch * 1009 + rt.rank)
                if config.freeze_epochs:
                    freeze_backbone(s, frozen=epoch <= config.freeze_epochs)
                result = train_one_epoch(s, epoch, stop, start_step, partial)
                start_step, partial = 0, None
                if result.stopped_at is not None:
                    if rt.is_main:
                        # The checkpoint's train_time counts finished epochs only: the unfinished epoch's seconds
                        # travel in `partial`, and the resumed epoch's own seconds already include them.
                        save_checkpoint(run_dir / "last.pt", s.checkpoint(epoch - 1, result.stopped_at, {
                            "loss_sum": result.loss_sum, "correct": result.correct, "seen": result.seen,
                            "seconds": result.seconds}))
                        runs.update_run_info(run_dir, status="interrupted", train_time=progress.train_time + result.seconds)
                        log.warning("stopped at epoch %d step %d; resume with: python train_%s.py --resume %s",
                                    epoch, result.stopped_at, config.arch, run_dir)
                    raise SystemExit(130)
                val = evaluate(s, s.data.val_idx)
                if len(s.data.val_idx) and not math.isfinite(val["loss"]):
                    raise Diverged(f"the validation loss became {val['loss']} at epoch {epoch}")
                broken = non_finite(s.raw_model) or non_finite(s.eval_model)
                if broken:
                    raise Diverged(f"the weights became NaN or infinite at epoch {epoch} ({', '.join(broken[:3])}"
                                   f"{', ...' if len(broken) > 3 else ''})")
                progress.train_time += result.seconds
                row = {"epoch": epoch, "train_loss": result.loss, "train_acc": result.acc, "val_loss": val["loss"],
                       "val_acc": val["acc"], "lr": result.lr, "seconds": result.seconds,
                       "images_per_s": result.seen / max(result.seconds, 1e-9), "val_score": val["score"]}
                progress.history.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
                has_val = len(s.data.val_idx) > 0
                improved = not has_val or progress.best_epoch == 0 or \
                    metrics.better(config.metric, val["score"], progress.best_val_score)
                if improved:
                    progress.best_val_acc, progress.best_epoch = (val["acc"] if has_val else math.nan), epoch
                    progress.best_val_score = val["score"] if has_val else math.nan
                if rt.is_main:
                    save_checkpoint(run_dir / "last.pt", s.checkpoint(epoch))
                    if improved:
                        save_checkpoint(run_dir / "best.pt", s.checkpoint(epoch, resumable=False))
                        if has_val:  # the best epoch's validation predictions: for ensembles and out-of-fold scores
                            runs.write_predictions(run_dir / "val_predictions.csv",
                                                   [_rel(s.data.files[i], config.data) for i in val["indices"]],
                                                   [s.spec.class_names[s.data.labels[i]] for i in val["indices"]],
                                                   val["probs"], s.spec.class_names)
                    runs.write_metrics(run_dir / "metrics.csv", progress.history)
                    runs.plot_curves(run_dir)
                    runs.update_run_info(run_dir, epochs_done=epoch, best_val_acc=progress.best_val_acc,
                                         best_val_score=progress.best_val_score, metric=config.metric,
                                         best_epoch=progress.best_epoch, train_time=progress.train_time,
                                         # the median epoch: one epoch slowed by other work on the machine does not set it
                                         images_per_s=statistics.median(r["images_per_s"] for r in progress.history))
                    log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  lr %.2e  %.1fs  %.0f img/s%s",
                             epoch, config.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                             "" if config.metric == "accuracy" else f" {config.metric} {val['score']:.4f}",
                             row["lr"], row["seconds"], row["images_per_s"], "  *best*" if improved and has_val else "")
                if config.patience and has_val and epoch < config.epochs and epoch - progress.best_epoch >= config.patience:
                    if rt.is_main:
                        runs.update_run_info(run_dir, status=f"stopped early: no better validation score in "
                                                             f"{config.patience} epochs")
                        log.info("early stopping after epoch %d: the best validation score was at epoch %d; best.pt "
                                 "holds it", epoch, progress.best_epoch)
                    return run_dir
                if epoch < config.epochs and (epoch == config.stop_at_epoch or any_process(stop.requested, rt)):
                    if rt.is_main:
                        runs.update_run_info(run_dir, status="paused" if epoch == config.stop_at_epoch else "interrupted")
                        log.info("stopped after epoch %d of %d; continue with: python train_%s.py --resume %s",
                                 epoch, config.epochs, config.arch, run_dir)
                    return run_dir
        except Diverged as e:
            if rt.is_main:
                runs.update_run_info(run_dir, status="diverged")
            kept = "best.pt and last.pt keep the last good epoch" if epoch > 1 else "no checkpoint was saved"
            raise DataError(f"{e}: stopping ({kept}). Try a lower --lr, --grad-clip 1, or --precision fp32.") from None
    if rt.is_main:
        runs.update_run_info(run_dir, status="finished")
        log.info("done: best val %s %s at epoch %d; %s", config.metric,
                 f"{progress.best_val_score:.4f}" if len(s.data.val_idx) else "n/a (no validation split)",
                 progress.best_epoch, run_dir)
    return run_dir


def train_folds(config: TrainConfig, script_defaults: dict | None = None) -> Path:
    """--folds K: train (or resume, or skip when done) the runs NAME-f1..NAME-fK, each holding out its fold, then
    collect their out-of-fold predictions in RUNS/NAME-oof.csv and print the out-of-fold score. Running the same
    command again resumes where it stopped. Returns the out-of-fold file."""
    rt = setup_runtime(config.device, config.deterministic, config.cudnn_benchmark)
    logging.basicConfig(level=logging.INFO if rt.is_main else logging.WARNING, format="%(message)s", stream=sys.stdout,
                        force=True)
    base = config.name or f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        for fold in range(1, config.folds + 1):
            run_dir = Path(config.runs_dir) / f"{base}-f{fold}"
            info = runs.read_run_info(run_dir) or {}
            status = str(info.get("status", ""))
            if status.startswith("stopped early") or (status == "finished" and info.get("epochs_done") == config.epochs):
                log.info("fold %d/%d: %s is done (%s)", fold, config.folds, run_dir, info["status"])
                continue
            resume = str(run_dir) if (run_dir / "last.pt").is_file() else ""
            log.info("fold %d/%d: %s %s", fold, config.folds, "resuming" if resume else "training", run_dir)
            _train(dataclasses.replace(config, fold=fold, name=f"{base}-f{fold}", resume=resume), rt,
                   script_defaults or {})
        if rt.is_main:
            return collect_out_of_fold(Path(config.runs_dir), base, config.folds, config.metric)
        return Path(config.runs_dir) / f"{base}-oof.csv"
    finally:
        if rt.distributed:
            dist.destroy_process_group()


def collect_out_of_fold(runs_dir: Path, base: str, folds: int, metric: str) -> Path:
    """The folds' validation predictions (each at its best epoch) in one file, RUNS/BASE-oof.csv, sorted by file,
    every training image exactly once; its score is printed and recorded in RUNS/BASE-oof.json."""
    files, labels, probs, names = [], [], [], None
    for fold in range(1, folds + 1):
        path = runs_dir / f"{base}-f{fold}" / "val_predictions.csv"
        if not path.is_file():
            raise DataError(f"fold {fold} has no validation predictions ({path}): train it first")
        f, l, n, p = runs.read_predictions(path)
        if names is not None and n != names:
            raise DataError(f"{path}: other classes than fold 1's")
        names = n
        files += f
        labels += l
        probs += p
    if len(set(files)) != len(files):
        raise DataError(f"the folds of {base} hold out overlapping images: were they trained with different --seed?")
    order = sorted(range(len(files)), key=lambda i: data.natural_key(files[i]))
    files, labels, probs = [files[i] for i in order], [labels[i] for i in order], np.array([probs[i] for i in order])
    out = runs_dir / f"{base}-oof.csv"
    runs.write_predictions(out, files, labels, probs, names)
    index = {name: i for i, name in enumerate(names)}
    oof = metrics.score(metric, probs, np.array([index[label] for label in labels]))
    atomic_write_text(runs_dir / f"{base}-oof.json", json.dumps({"metric": metric, "score": oof, "folds": folds,
                                                                "images": len(files)}, indent=2))
    print(f"out-of-fold {metric}: {oof:.4f} over {len(files)} images ({folds} folds) -> {out}")
    return out


def main(arch: str, argv=None, **defaults) -> Path | None:
    """Entry point of each train_<arch>.py: parse flags over the script's defaults and train (every fold with
    --folds K)."""
    try:
        config = parse_config(arch, defaults, argv)
        if config.folds and not config.fold and not config.resume:
            return train_folds(config, defaults)
        if config.fold and not config.resume:  # one fold: named as --folds names it
            base = config.name or f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
            config.name = f"{base}-f{config.fold}"
        return train(config, defaults)
    except UsageError as e:
        sys.exit(f"error: {explain(e)}")


if __name__ == "__main__":  # kept for the commands of older READMEs: the run tools now live in runs.py
    runs.main()
