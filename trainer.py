"""The one training loop: training epochs of a session (session.py sets it up: data, model, optimiser, compute
format, a resumed state), evaluating them, and saving checkpoints. Each train_<arch>.py only sets its defaults
and calls `main`; options live in config.py, the device in runtime.py, the checkpoint format in checkpoint.py,
metrics and the runs table in runs.py.

    python train_cnn.py --data data/fashion-mnist                 # train (see README for each architecture)
    python train_cnn.py --resume runs/cnn-20260101-120000 --epochs 30   # continue, possibly for longer
    torchrun --nproc_per_node 2 train_cnn.py --data DIR            # data-parallel on 2 processes
    python train_cnn.py --data DIR --find-lr                      # a learning rate to train with (lr_finder.py)
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import data
import metrics
import recipe
import runs
from checkpoint import load_checkpoint, save_checkpoint
from config import (FOLLOW_DATA, TrainConfig, build_parser, default_run_name, fold_name, parse_config, read_saved_config,
                    save_config, script_name)
from errors import DataError, OptionError, UsageError, explain
from fileio import atomic_write_text
from images import label_text, parse_labels
from inference import infer
from lr_finder import find_lr
from models import head_name
from runtime import Runtime, all_reduce, any_process, cuda_graphs, seconds_since_start, setup_runtime
from session import (Session, StartClaim, check_folds_fit, describe_schedule_change, freeze_backbone, norm_source,
                     prepare_session, record_skipped, run_dir_for)

log = logging.getLogger("imgcomp")


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


# ----------------------------------------------------------------------------------------------
# An epoch: the steps, evaluation
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
    seconds = partial["seconds"] if partial else 0.0
    batches = data.batches(s.data.pixels, s.data.labels, s.data.train_idx, cfg.batch_size, rt.device, shuffle=True,
                           seed=cfg.seed, epoch=epoch, drop_last=True, start_step=start_step, stop_step=steps,
                           rank=rt.rank, world_size=rt.world_size, balance=cfg.balance == "sampler")
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
               disable=not (rt.is_main and cfg.progress), leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    lr = s.optimizer.param_groups[0]["lr"]
    for step, (x, y) in enumerate(batches, start=start_step):
        lr = _step(s, x, y, (epoch - 1) * s.schedule.steps_per_epoch + step, sums)
        bar.update()
        last = step + 1 == steps
        if step % 10 == 0 or last:
            _check_progress(bar, sums, epoch, step, seconds + time.perf_counter() - start, rt)
        if not last and _stop_agreed(stop, step, rt):
            bar.close()
            return EpochResult(*all_reduce(sums.total(), rt), seconds + time.perf_counter() - start, lr,
                               stopped_at=step + 1)
    bar.close()
    loss_sum, correct, seen = all_reduce(sums.total(), rt)
    if not math.isfinite(loss_sum):
        raise Diverged(f"the training loss became {loss_sum} at epoch {epoch}")
    return EpochResult(loss_sum, correct, seen, seconds + time.perf_counter() - start, lr)


def _step(s: Session, x: torch.Tensor, y: torch.Tensor, step: int, sums: DeviceSums) -> float:
    """One optimiser step on the batch (x, y), the `step`-th of the run; returns its learning rate."""
    lr = s.schedule.at(step)
    for group in s.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # --head-lr-mult scales the classifier's
    x, targets = s.preprocess(x, train=True), y
    if s.mix.active:  # soft targets; accuracy counts the labels that weigh most in each mixed image
        x, targets, y = s.mix(x, y, len(s.spec.class_names))
    if s.config.compile and cuda_graphs(s.rt):  # the compiled model replays CUDA graphs: each step is marked
        torch.compiler.cudagraph_mark_step_begin()
    with s.spec.compute.autocast(s.rt.device):
        logits = s.model(x)
        loss = s.loss_fn(logits, targets)
    s.scaler.scale(loss).backward()  # the scaler does nothing unless fp16
    if s.config.grad_clip > 0:
        s.scaler.unscale_(s.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(s.model.parameters(), s.config.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    if s.ema:
        s.ema.update(step)
    sums.add(loss.detach() * len(y), count_correct(logits, y), len(y))
    return lr


def count_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The images of a batch predicted right: the most probable class is the label; multi-label (`y` (B, classes)):
    every tag decided right at probability 1/2 (logit 0), an exact match."""
    if y.ndim == 2:
        return ((logits > 0) == (y > 0.5)).all(1).sum()
    return (logits.argmax(1) == y).sum()


def _check_progress(bar: tqdm, sums: DeviceSums, epoch: int, step: int, elapsed: float, rt: Runtime):
    """Show the epoch's loss, accuracy and speed so far; a non-finite loss ends the run."""
    loss_sum, correct, seen = sums.peek()  # a few steps behind on a GPU: it does not wait for it
    if not math.isfinite(loss_sum):
        raise Diverged(f"the training loss became {loss_sum} by epoch {epoch}, step {step + 1}")
    if seen:
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                        img_s=f"{seen * rt.world_size / max(elapsed, 1e-9):.0f}", refresh=False)


def _stop_agreed(stop: StopRequest, step: int, rt: Runtime) -> bool:
    """Whether to stop after this step: as requested; across processes agreed every 10 steps (an all-reduce
    waits for the device)."""
    if not rt.distributed:
        return stop.requested
    return step % 10 == 0 and any_process(stop.requested, rt)


@torch.no_grad()
def evaluate(s: Session, indices: np.ndarray) -> dict:
    """Loss, accuracy and the --metric's score on `indices` (no augmentation), over all processes; the class
    probabilities of those images, in the order of `indices` sorted ("indices", "probs"); and, multi-label, the
    tags' thresholds fitted for the metric on them, which its accuracy and score decide with ("thresholds")."""
    if len(indices) == 0:
        return {"loss": math.nan, "acc": math.nan, "score": math.nan, "thresholds": None}
    device = s.rt.device
    labels = torch.from_numpy(s.data.labels).to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen_idx, seen_log_probs = [], []
    for idx, log_probs in infer(s.eval_model, s.data.pixels, indices, s.preprocess, s.spec.compute, device,
                                s.config.batch_size * 2, rank=s.rt.rank, world_size=s.rt.world_size,
                                multi_label=s.spec.multi_label):
        loss_sum += summed_loss(log_probs, labels[idx])
        seen_idx.append(idx)
        seen_log_probs.append(log_probs)
    idx, probs = _gather(s, seen_idx, seen_log_probs)
    loss = all_reduce([loss_sum.item()], s.rt)[0] / len(idx)
    return {"loss": loss, "indices": idx, "probs": probs, **scores(s.config.metric, probs, s.data.labels[idx])}


# Kaggle clips probabilities to [1e-15, 1 - 1e-15] (as metrics.log_loss does): a tag's log p and log(1 - p) are
# no lower, so one confident miss costs a bounded loss.
LOG_EPS = math.log(1e-15)


def summed_loss(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A batch's validation loss summed over its images: -log p of the label; multi-label (`labels` (B, classes)):
    each image's binary cross-entropy averaged over its tags, so the validation loss is the mean over every
    (image, tag) entry."""
    if labels.ndim == 1:
        return F.nll_loss(log_probs, labels, reduction="sum").double()
    y = labels.to(log_probs.dtype)
    log_not = torch.log(-torch.expm1(log_probs)).clamp_min(LOG_EPS)  # log(1 - p) from log p
    return -(y * log_probs.clamp_min(LOG_EPS) + (1 - y) * log_not).mean(1).sum().double()


def scores(metric: str, probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and `metric` of `probs` against `labels` ("acc", "score"); multi-label: decided with each tag's
    threshold fitted for `metric` on these images ("thresholds"; None for single-label labels)."""
    if not np.isfinite(probs).all():  # a diverged model: check_finite ends the run
        return {"acc": math.nan, "score": math.nan, "thresholds": None}
    thresholds = metrics.fit_thresholds(metric, probs, labels) if labels.ndim == 2 else None
    return {"acc": metrics.score("accuracy", probs, labels, thresholds),
            "score": metrics.score(metric, probs, labels, thresholds),
            "thresholds": None if thresholds is None else [float(t) for t in thresholds]}


def _gather(s: Session, seen_idx: list, seen_log_probs: list) -> tuple[np.ndarray, np.ndarray]:
    """The indices and probabilities (float64, on the host) seen by every process, sorted by index."""
    idx = torch.cat(seen_idx).cpu().numpy() if seen_idx else np.zeros(0, np.int64)
    probs = torch.cat(seen_log_probs).exp().double().cpu().numpy() if seen_log_probs else \
        np.zeros((0, len(s.spec.class_names)))
    if s.rt.distributed:
        parts = [None] * s.rt.world_size
        dist.all_gather_object(parts, (idx, probs))
        idx, probs = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.argsort(idx)
    return idx[order], probs[order]


def non_finite(model: nn.Module) -> list[str]:
    """Names of the model's weights and buffers that hold NaN or infinity."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]


# ----------------------------------------------------------------------------------------------
# A run: its epochs, and what each one records
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def started_runtime(config: TrainConfig):
    """The device and torchrun process group of `config` (runtime.setup_runtime), logging for people on rank 0
    (the others only warn); the process group is closed at the end."""
    rt = setup_runtime(config.device, config.deterministic, config.cudnn_benchmark)
    logging.basicConfig(level=logging.INFO if rt.is_main else logging.WARNING, format="%(message)s", stream=sys.stdout,
                        force=True)
    try:
        yield rt
    finally:
        if rt.distributed:
            dist.destroy_process_group()


def train(config: TrainConfig, script_defaults: dict | None = None, notes: tuple[str, ...] = (),
          follow_data: frozenset = frozenset()) -> Path:
    """Train a model as `config` says; returns the run folder. `script_defaults` (those of the train_<arch>.py
    that runs it) are recorded in run.json, so that the runs table can write the run's command; `notes` (the
    options the command line settled, `settle_options`) go in the log; `follow_data`: the options (of
    config.FOLLOW_DATA) to choose for the data, those the command line did not give (`followed_options`)."""
    with started_runtime(config) as rt:
        if config.folds and not config.resume:  # one fold (--fold I); train_folds checks before its first fold
            check_folds_fit(config, rt)
        if config.find_lr:  # a learning-rate range test instead of the run (lr_finder.py): nothing trained is kept
            return find_lr(config, rt, script_defaults or {}, _step, notes, follow_data)
        return _train(config, rt, script_defaults or {}, notes, follow_data)


def _train(config: TrainConfig, rt: Runtime, script_defaults: dict, notes: tuple[str, ...] = (),
           follow_data: frozenset = frozenset()) -> Path:
    """One run on a started runtime, in its folder, which rank 0 holds while it trains. The folder is created
    once the session is set up (every check passed); a start that fails before its first epoch removes it."""
    run_dir = run_dir_for(config)
    claim = StartClaim(run_dir, rt.is_main)
    try:
        return _train_run(config, rt, script_defaults, run_dir, notes, claim, follow_data)
    except BaseException:
        claim.remove_if_unstarted()
        raise
    finally:
        claim.release()


def _train_run(config: TrainConfig, rt: Runtime, script_defaults: dict, run_dir: Path,
               notes: tuple[str, ...], claim: StartClaim, follow_data: frozenset) -> Path:
    """The plan of a run: set up, then per epoch train, evaluate, record, write, and decide whether to go on."""
    s, resume, choice = prepare_session(config, rt, run_dir, follow_data)
    start_epoch, start_step, partial = resumed_position(s, resume)
    if rt.is_main:
        claim.claim()
        if s.data.skipped:  # only now: a refused resume leaves the run's files as they were
            record_skipped(run_dir, s.data.files, s.data.skipped)
        record_start(s, start_epoch, resume is not None, choice, script_defaults, notes)
    curves = runs.CurvesDrawer(run_dir)
    with StopRequest() as stop, contextlib.closing(curves):
        epoch = start_epoch - 1
        while epoch < s.config.epochs:  # --time-budget may re-plan the epochs after the first one
            epoch, began = epoch + 1, time.perf_counter()
            try:
                seed_epoch(s, epoch, resume["training"] if start_step else None)
                if s.config.freeze_epochs:
                    freeze_backbone(s, frozen=epoch <= s.config.freeze_epochs)
                result = train_one_epoch(s, epoch, stop, start_step, partial)
                start_step, partial = 0, None
                if result.stopped_at is not None:
                    if rt.is_main:
                        save_interrupted(s, epoch, result)
                    raise SystemExit(130)
                val = evaluate(s, s.data.val_idx)
                check_finite(s, epoch, val)
            except Diverged as e:
                raise diverged(s, epoch, e) from None
            if epoch == 1 and s.config.time_budget:  # before epoch 1's checkpoint records the schedule
                replan_for_budget(s, epoch, time.perf_counter() - began)
            if epoch == CAP_AT_EPOCH and s.epoch_cap:
                cap_epochs(s, epoch, time.perf_counter() - began)
            row, improved = record_epoch(s, epoch, result, val)
            if rt.is_main:
                write_epoch(s, epoch, row, val, improved, curves)
            status = reason_to_stop(s, epoch, stop)
            if status:
                if rt.is_main:
                    record_stop(s, epoch, status)
                return run_dir
    if rt.is_main:
        record_finish(s)
    return run_dir


def replan_for_budget(s: Session, epoch: int, epoch_s: float):
    """--time-budget, after the run's first epoch: the epochs its measured time (training, evaluation and writing)
    fits in the budget, when they differ from the plan made from the trial's step time; rank 0 decides for all."""
    planned = s.config.epochs
    epochs = recipe.replan_epochs(s.config.time_budget * 60, seconds_since_start(), epoch, epoch_s, planned)
    if change_epochs(s, epochs) and s.rt.is_main:
        log.info("time budget: %d epochs instead of %d (epoch %d took %.1f s; %.0f s of %g minutes spent)",
                 s.config.epochs, planned, epoch, epoch_s, seconds_since_start(), s.config.time_budget)


# The epoch after which a CPU run's added epochs are capped (`Session.epoch_cap`): the first is often slower (the
# kernels are built in its first steps).
CAP_AT_EPOCH = 2


def cap_epochs(s: Session, epoch: int, epoch_s: float):
    """On a CPU, after epoch CAP_AT_EPOCH of a new run whose recipe raised the epochs: those the measured epoch
    fits in recipe.CPU_ADDED_EPOCHS_MINUTES (`recipe.cap_added_epochs`); rank 0 decides for all."""
    minutes, floor = s.epoch_cap
    epochs, why = recipe.cap_added_epochs(minutes, seconds_since_start(), epoch, epoch_s, s.config.epochs, floor)
    if change_epochs(s, epochs):
        s.recipe = {**s.recipe, "epochs": why or f"{s.config.epochs} epochs, as rank 0 capped them"}
        if s.rt.is_main:
            runs.update_run_info(s.run_dir, recipe=s.recipe)
            log.info("%s", why)


def change_epochs(s: Session, epochs: int) -> bool:
    """The run's epochs (and its schedule) set to `epochs` as rank 0 decided them, recorded in config.json and
    run.json; False when they do not change."""
    if s.rt.distributed:
        box = [epochs]
        dist.broadcast_object_list(box, src=0)
        epochs = box[0]
    if epochs == s.config.epochs:
        return False
    s.config = dataclasses.replace(s.config, epochs=epochs)
    s.schedule.epochs = epochs
    if s.rt.is_main:
        save_config(s.config, s.run_dir)
        runs.update_run_info(s.run_dir, epochs=epochs)
    return True


def resumed_position(s: Session, resume: dict | None) -> tuple[int, int, dict | None]:
    """Where the run continues: (epoch, step in it, the sums of that epoch's interrupted part)."""
    if not resume:
        return 1, 0, None
    step, partial = resume["training"].get("step", 0), resume["training"].get("partial")
    if step >= s.schedule.steps_per_epoch:  # a stop after an epoch's last step: the next one starts afresh
        step, partial = 0, None
    return resume["epoch"] + 1, step, partial


def record_start(s: Session, start_epoch: int, resuming: bool, choice: dict | None, script_defaults: dict,
                 notes: tuple[str, ...] = ()):
    """On rank 0: the run's config.json and run.json, and the log lines that say what it trains (and `notes`)."""
    config, p, run_dir = s.config, s.progress, s.run_dir
    ready = round(seconds_since_start(), 1)
    size_from = None if resuming else ("images" if "img_size" in s.recipe else "flag")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir)
    runs.update_run_info(run_dir, name=run_dir.name, arch=config.arch, epochs=config.epochs,
                         data_path=os.path.abspath(config.data),
                         epochs_done=start_epoch - 1, batch_size=config.batch_size, img_size=config.img_size,
                         mode=str(s.spec.compute), status="running", multi_label=s.spec.multi_label,
                         best_val_acc=p.best_val_acc if p.best_epoch else None, metric=config.metric,
                         train_time=p.train_time, script_defaults=script_defaults, lr_schedule=s.schedule.state(),
                         startup_s=ready, **({"mode_choice": choice} if choice else {}),
                         **({"img_size_from": size_from} if size_from else {}),
                         **({"recipe": s.recipe} if s.recipe else {}), **({"time_budget_min": config.time_budget}
                                                                          if config.time_budget else {}))
    log.info("%s: %s on %s, %d %s, %d train / %d val images of %dx%dx%d, %s, %d epochs -> %s (ready %.1f s "
             "after start)", "resuming" if resuming else "training", config.arch, s.rt.device, len(s.spec.class_names),
             "tags (multi-label)" if s.spec.multi_label else "classes", len(s.data.train_idx), len(s.data.val_idx),
             s.spec.channels, config.img_size, config.img_size, s.spec.compute, config.epochs, run_dir, ready)
    if config.pretrained or config.head_lr_mult != 1 or config.freeze_epochs:
        log.info("fine-tuning: weights %s; normalisation with %s (mean %s, std %s); the classifier (%s) at %gx "
                 "the learning rate; the backbone frozen for the first %d epoch(s)", config.pretrained or "random",
                 norm_source(config), s.spec.mean, s.spec.std, head_name(config.arch), config.head_lr_mult,
                 config.freeze_epochs)
    log_recipe(s, size_from)
    if s.schedule_change:
        log.info(describe_schedule_change(s.schedule_change, s.schedule.steps_per_epoch, config.lr))
    for note in notes:
        log.info(note)
    if s.spec.multi_label and config.metric == "accuracy":
        log.info("--metric accuracy on multi-label data: the share of images with every tag right (subset accuracy); "
                 "tag competitions are mostly scored per image: --metric f2_samples or f1_samples")
    if config.patience and not len(s.data.val_idx):
        log.warning("--patience %d: the validation split holds no images (its classes are too small to hold any "
                    "out), so there is no score to wait for: the run trains all its epochs", config.patience)
    if start_epoch > config.epochs:
        log.info("the run already has %d epochs; raise --epochs to train longer", config.epochs)


def log_recipe(s: Session, size_from: str | None):
    """The log lines that say which image size, batch size, learning rate, epochs and augmentation the run trains
    with, and why (chosen for the data, given as flags, or the resumed run's own)."""
    config = s.config
    why = s.recipe.get("img_size") or {"flag": "--img-size", None: "the resumed run's: it cannot change on resuming"}[size_from]
    log.info("image size %d px: %s", config.img_size, why)
    for option, text in (("batch_size", f"batch size {config.batch_size}"), ("lr", f"learning rate {config.lr:g}"),
                         ("epochs", f"{config.epochs} epochs"), ("dihedral", "all 8 orientations"),
                         ("translate", f"shifts up to {config.translate} px"),
                         ("head_pool", f"head pooling {config.head_pool!r}")):
        if option in s.recipe:
            log.info("%s: %s", text, s.recipe[option])


def seed_epoch(s: Session, epoch: int, interrupted: dict | None):
    """Seed the epoch's randomness from (seed, epoch) alone, so that resuming repeats it; an epoch resumed in
    its middle continues from the random state saved there (`interrupted`: the checkpoint's training part)."""
    if interrupted and interrupted.get("rng") is not None:
        torch.set_rng_state(interrupted["rng"])
        if interrupted.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(interrupted["cuda_rng"], s.rt.device)
    else:
        torch.manual_seed(s.config.seed * 100_003 + epoch * 1009 + s.rt.rank)


def save_interrupted(s: Session, epoch: int, result: EpochResult):
    """On rank 0, after a stop request in the middle of `epoch`: a resumable last.pt at the step reached."""
    # The checkpoint's train_time counts finished epochs only: the unfinished epoch's seconds travel in
    # `partial`, and the resumed epoch's own seconds already include them.
    save_checkpoint(s.run_dir / "last.pt", s.checkpoint(epoch - 1, result.stopped_at, {
        "loss_sum": result.loss_sum, "correct": result.correct, "seen": result.seen, "seconds": result.seconds}))
    runs.update_run_info(s.run_dir, status="interrupted", train_time=s.progress.train_time + result.seconds)
    log.warning("stopped at epoch %d step %d; resume with: python %s --resume %s", epoch, result.stopped_at,
                script_name(s.config.arch), s.run_dir)


def check_finite(s: Session, epoch: int, val: dict):
    """Diverged when the validation loss or any weight became NaN or infinite."""
    if len(s.data.val_idx) and not math.isfinite(val["loss"]):
        raise Diverged(f"the validation loss became {val['loss']} at epoch {epoch}")
    broken = non_finite(s.raw_model) or non_finite(s.eval_model)
    if broken:
        raise Diverged(f"the weights became NaN or infinite at epoch {epoch} ({', '.join(broken[:3])}"
                       f"{', ...' if len(broken) > 3 else ''})")


def diverged(s: Session, epoch: int, e: Diverged) -> DataError:
    """The error that ends a diverged run (marked so in run.json), with what to try instead."""
    if s.rt.is_main:
        runs.update_run_info(s.run_dir, status="diverged")
    kept = "best.pt and last.pt keep the last good epoch" if epoch > 1 else "no checkpoint was saved"
    return DataError(f"{e}: stopping ({kept}). Try a lower --lr, --grad-clip 1, or --precision fp32.")


def record_epoch(s: Session, epoch: int, result: EpochResult, val: dict) -> tuple[dict, bool]:
    """The epoch in the run's progress: its metrics row and whether it is the best so far (by --metric; without
    a validation split, the latest is)."""
    p, has_val = s.progress, len(s.data.val_idx) > 0
    p.train_time += result.seconds
    row = {"epoch": epoch, "train_loss": result.loss, "train_acc": result.acc, "val_loss": val["loss"],
           "val_acc": val["acc"], "lr": result.lr, "seconds": result.seconds,
           "images_per_s": result.seen / max(result.seconds, 1e-9), "val_score": val["score"]}
    p.history.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    improved = not has_val or p.best_epoch == 0 or metrics.better(s.config.metric, val["score"], p.best_val_score)
    if improved:
        p.best_val_acc, p.best_epoch = (val["acc"] if has_val else math.nan), epoch
        p.best_val_score = val["score"] if has_val else math.nan
        s.spec.thresholds = val["thresholds"] if has_val else None  # what best.pt (and last.pt) decide tags with
    return row, improved


def write_epoch(s: Session, epoch: int, row: dict, val: dict, improved: bool, curves: runs.CurvesDrawer):
    """On rank 0, the epoch's outputs: last.pt; metrics.csv and curves.png (drawn by `curves` while the rest is
    written and the next epoch trains; metrics.csv never runs ahead of last.pt); best.pt and val_predictions.csv
    when it is the best; run.json, and its log line."""
    config, p, run_dir, has_val = s.config, s.progress, s.run_dir, len(s.data.val_idx) > 0
    save_checkpoint(run_dir / "last.pt", s.checkpoint(epoch))
    runs.write_metrics(run_dir / "metrics.csv", p.history)
    curves.request()
    if improved:
        save_checkpoint(run_dir / "best.pt", s.checkpoint(epoch, resumable=False))
        if has_val:  # the best epoch's validation predictions: for ensembles and out-of-fold scores
            runs.write_predictions(run_dir / "val_predictions.csv", s.image_ids(val["indices"]),
                                   [label_text(s.data.labels[i], s.spec.class_names, s.spec.multi_label)
                                    for i in val["indices"]], val["probs"], s.spec.class_names, s.data.id_column)
    runs.update_run_info(run_dir, epochs_done=epoch, best_val_acc=p.best_val_acc, best_val_score=p.best_val_score,
                         metric=config.metric, best_epoch=p.best_epoch, train_time=p.train_time,
                         # the median epoch: one epoch slowed by other work on the machine does not set it
                         images_per_s=statistics.median(r["images_per_s"] for r in p.history))
    log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s%s  lr %.2e  %.1fs  %.0f img/s%s",
             epoch, config.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
             "" if config.metric == "accuracy" else f" {config.metric} {val['score']:.4f}", rare_recall(s, val),
             row["lr"], row["seconds"], row["images_per_s"], "  *best*" if improved and has_val else "")


def rare_classes(s: Session) -> list[int]:
    """The classes with at most half the training images of the most common one (single-label), rarest first, at
    most two: their recall is what an imbalanced competition's accuracy hides."""
    if s.spec.multi_label or not len(s.data.train_idx):
        return []
    counts = np.bincount(s.data.labels[s.data.train_idx], minlength=len(s.spec.class_names))
    return [int(k) for k in np.argsort(counts, kind="stable")[:2] if counts[k] * 2 <= counts.max()]


def rare_recall(s: Session, val: dict) -> str:
    """'  recall ring 0.50' for the rare classes (`rare_classes`) of the validation images, for the epoch's line."""
    if "probs" not in val:
        return ""
    truth, pred = s.data.labels[val["indices"]], np.asarray(val["probs"]).argmax(1)
    parts = [f"{s.spec.class_names[k]} {(pred[truth == k] == k).mean():.2f}" for k in rare_classes(s)
             if (truth == k).any()]
    return f"  recall {', '.join(parts)}" if parts else ""


def reason_to_stop(s: Session, epoch: int, stop: StopRequest) -> str | None:
    """Why the run ends after `epoch`, before its last (run.json's status): --patience, --stop-at-epoch or a
    stop request (agreed by every process); None: it goes on."""
    config, p = s.config, s.progress
    if epoch >= config.epochs:
        return None
    if config.patience and len(s.data.val_idx) and epoch - p.best_epoch >= config.patience:
        return f"stopped early: no better validation score in {config.patience} epochs"
    if epoch == config.stop_at_epoch:
        return "paused"
    return "interrupted" if any_process(stop.requested, s.rt) else None


def record_stop(s: Session, epoch: int, status: str):
    """On rank 0: why the run stopped after `epoch`, in run.json and the log."""
    runs.update_run_info(s.run_dir, status=status)
    if status.startswith("stopped early"):
        log.info("early stopping after epoch %d: the best validation score was at epoch %d; best.pt holds it",
                 epoch, s.progress.best_epoch)
    else:
        log.info("stopped after epoch %d of %d; continue with: python %s --resume %s", epoch, s.config.epochs,
                 script_name(s.config.arch), s.run_dir)


def record_finish(s: Session):
    """On rank 0: the finished run in run.json, and its best validation score in the log."""
    runs.update_run_info(s.run_dir, status="finished")
    log.info("done: best val %s %s at epoch %d; %s", s.config.metric,
             f"{s.progress.best_val_score:.4f}" if len(s.data.val_idx) else "n/a (no validation split)",
             s.progress.best_epoch, s.run_dir)


# ----------------------------------------------------------------------------------------------
# K folds, and the entry point
# ----------------------------------------------------------------------------------------------

def train_folds(config: TrainConfig, script_defaults: dict | None = None, notes: tuple[str, ...] = (),
                follow_data: frozenset = frozenset()) -> Path:
    """--folds K: train (or resume, or skip when done) the runs NAME-f1..NAME-fK, each holding out its fold, then
    collect their out-of-fold predictions in RUNS/NAME-oof.csv and print the out-of-fold score. Running the same
    command again resumes where it stopped. Returns the out-of-fold file."""
    with started_runtime(config) as rt:
        base = config.name or default_run_name(config.arch)
        check_folds_fit(config, rt)  # before the first fold trains
        for fold in range(1, config.folds + 1):
            run_dir = Path(config.runs_dir) / fold_name(base, fold)
            info = runs.read_run_info(run_dir) or {}
            status = str(info.get("status", ""))
            planned = info.get("epochs") if "epochs" in follow_data or config.time_budget else config.epochs
            if status.startswith("stopped early") or (status == "finished" and info.get("epochs_done") == planned):
                log.info("fold %d/%d: %s is done (%s)", fold, config.folds, run_dir, info["status"])
                continue
            resume = str(run_dir) if (run_dir / "last.pt").is_file() else ""
            log.info("fold %d/%d: %s %s", fold, config.folds, "resuming" if resume else "training", run_dir)
            _train(fold_config(config, fold, run_dir, resume), rt, script_defaults or {}, notes, follow_data)
        if rt.is_main:
            return collect_out_of_fold(Path(config.runs_dir), base, config.folds, config.metric)
        return Path(config.runs_dir) / f"{base}-oof.csv"


def fold_config(config: TrainConfig, fold: int, run_dir: Path, resume: str) -> TrainConfig:
    """The config of fold `fold` (its run in `run_dir`); resumed, with the values it chose for its data."""
    config = dataclasses.replace(config, fold=fold, name=run_dir.name, resume=resume)
    if not resume:
        return config
    saved = read_saved_config(run_dir)
    return dataclasses.replace(config, **{k: saved[k] for k in (*FOLLOW_DATA, "img_size") if k in saved})


def collect_out_of_fold(runs_dir: Path, base: str, folds: int, metric: str) -> Path:
    """The folds' validation predictions (each at its best epoch) in one file, RUNS/BASE-oof.csv, keyed and sorted
    by the competition's id (the labels CSV's id column, named as there), every training image exactly once; its score is printed and recorded in RUNS/BASE-oof.json, with (multi-label)
    the tags' thresholds fitted for the metric on these out-of-fold probabilities, which the score decides with."""
    files, labels, probs, names, id_column = read_folds(runs_dir, base, folds)
    order = sorted(range(len(files)), key=lambda i: data.natural_key(files[i]))
    files, labels, probs = [files[i] for i in order], [labels[i] for i in order], np.array([probs[i] for i in order])
    out = runs_dir / f"{base}-oof.csv"
    runs.write_predictions(out, files, labels, probs, names, id_column=id_column)
    multi_label = folds_multi_label(runs_dir, base, folds)
    truth = parse_labels(labels, names, multi_label, out, list(range(2, len(labels) + 2)))
    thresholds = metrics.fit_thresholds(metric, probs, truth) if multi_label else None
    oof = metrics.score(metric, probs, truth, thresholds)
    summary = {"metric": metric, "score": oof, "folds": folds, "images": len(files), "multi_label": multi_label,
               "thresholds": None if thresholds is None else [float(t) for t in thresholds]}
    atomic_write_text(runs_dir / f"{base}-oof.json", json.dumps(summary, indent=2))
    print(f"out-of-fold {metric}: {oof:.4f} over {len(files)} images ({folds} folds"
          f"{', tag thresholds fitted on them' if multi_label else ''}) -> {out}")
    return out


def read_folds(runs_dir: Path, base: str,
               folds: int) -> tuple[list[str], list[str], list[list[float]], list[str], str]:
    """(ids, labels, probabilities, class names, the id column's name) of the validation predictions of every fold
    of `base`, which must hold out disjoint images and share their classes and id column."""
    files, labels, probs, names, id_column = [], [], [], None, None
    for fold in range(1, folds + 1):
        path = runs_dir / fold_name(base, fold) / "val_predictions.csv"
        if not path.is_file():
            raise DataError(f"fold {fold} has no validation predictions ({path}): train it first")
        f, l, n, p = runs.read_predictions(path)
        if names is not None and n != names:
            raise DataError(f"{path}: other classes than fold 1's")
        column = id_column_of(path)
        if id_column is not None and column != id_column:
            raise DataError(f"{path}: its images are named by another column than fold 1's (a fold trained by an "
                            "older version names them by file): train the folds with the same version")
        names, id_column = n, column
        files += f
        labels += l
        probs += p
    if len(set(files)) != len(files):
        raise DataError(f"the folds of {base} hold out overlapping images: were they trained with different --seed?")
    return files, labels, probs, names, id_column


def id_column_of(path: Path) -> str:
    """The id column's name in the header of a predictions file (`file` in older runs)."""
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), ["file"])[0]


def folds_multi_label(runs_dir: Path, base: str, folds: int) -> bool:
    """Whether the folds of `base` predict tags (multi-label), as each fold's best.pt says; they must agree."""
    kinds = []
    for fold in range(1, folds + 1):
        path = runs_dir / fold_name(base, fold) / "best.pt"
        kinds.append(bool(load_checkpoint(path)["spec"]["multi_label"]))
        if kinds[-1] != kinds[0]:
            shape = {True: "multi-label (tags)", False: "single-label"}
            raise DataError(f"fold {fold} ({path}) is {shape[kinds[-1]]}, fold 1 is {shape[kinds[0]]}: the folds of "
                            f"{base} were trained on different labels")
    return kinds[0]


def main(arch: str, argv=None, **defaults) -> Path | None:
    """Entry point of each train_<arch>.py: parse flags over the script's defaults and train (every fold with
    --folds K)."""
    try:
        config = parse_config(arch, defaults, argv)
        if not Path(config.data).is_dir():  # before the runtime starts (a config from Python may name it later)
            raise DataError("no such dataset folder", option="data", value=config.data)
        given = given_options(arch, defaults, argv)
        config, notes = settle_options(config, given)
        follow = followed_options(config, given)
        if config.folds and not config.fold and not config.resume:
            return train_folds(config, defaults, notes, follow)
        if config.fold and not config.resume:  # one fold: named as --folds names it
            config = dataclasses.replace(config, name=fold_name(config.name or default_run_name(arch), config.fold))
        return train(config, defaults, notes, follow)
    except UsageError as e:
        sys.exit(f"error: {explain(e)}")


def given_options(arch: str, defaults: dict, argv=None) -> set[str]:
    """The options named on the command line (its parser leaves out every option not given)."""
    return set(vars(build_parser(arch, defaults).parse_args(argv)))


def followed_options(config: TrainConfig, given: set[str]) -> frozenset:
    """The options a new run chooses for its data (recipe.py): those of FOLLOW_DATA not `given`; with
    --time-budget the epochs are the budget's, and --epochs may not be given too."""
    if config.time_budget and "epochs" in given and not config.resume:
        raise OptionError(f"--epochs {config.epochs} and --time-budget {config.time_budget:g} both set the number of "
                          "epochs: give one of them")
    return frozenset() if config.resume else frozenset(FOLLOW_DATA) - given - ({"epochs"} if config.time_budget else set())


def settle_options(config: TrainConfig, given: set[str]) -> tuple[TrainConfig, tuple[str, ...]]:
    """Defaults that depend on the metric, for a new run (a resumed one keeps its saved values) and for options
    not `given` on the command line (given ones always win): the config to train with, which config.json records,
    and the log lines that say what was chosen and why."""
    notes = []
    if config.metric == "log_loss" and config.label_smoothing and "label_smoothing" not in given and not config.resume:
        notes.append(f"--metric log_loss: training without label smoothing (the default --label-smoothing "
                     f"{config.label_smoothing:g} teaches probabilities short of 1 where the model is sure, and log "
                     "loss charges for that on every image); pass --label-smoothing to choose one")
        config = dataclasses.replace(config, label_smoothing=0.0)
    return config, tuple(notes)


if __name__ == "__main__":  # kept for the commands of older READMEs: the run tools now live in runs.py
    runs.main()
