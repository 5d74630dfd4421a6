"""The learning-rate range test (`--find-lr`), as fastai's lr_find: the run's freshly built session (model,
optimiser, loss, augmentation, compute format, batches: session.prepare_session, exactly as training would build
them) trains for up to MAX_STEPS steps with the rate rising exponentially from START_LR to END_LR, cycling through
epochs of the training split, and stops early when the smoothed loss passes DIVERGE_FACTOR times its minimum.
Nothing trained is kept: the run's folder is not touched, and its outputs go to RUNS/NAME-lr-find/
(lr_find.csv, lr_find.json, lr_find.png; no run.json, so the runs table does not list it).

    python train_cnn.py --data DIR --find-lr       # -> runs/cnn-<date>-<time>-lr-find/, and the --lr to train with

The suggestion is a tenth of the rate at the smoothed loss's minimum: the smoothed loss trails the raw one by
about 50 steps, so its minimum sits near where the raw loss starts to climb, and a decade below that is the classic
choice (fastai's lr_min). The rate where the smoothed loss fell fastest (its steepest descent against log(rate)) is
logged and drawn beside it: on data learnt within the first steps, or on a curve that hardly falls, that one lands
far below a useful rate, which is why it is not the suggestion.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

import data
import runs
from config import TrainConfig, default_run_name
from errors import DataError, OptionError
from fileio import atomic_write, atomic_write_text
from runtime import Runtime
from session import Session, prepare_session

log = logging.getLogger("imgcomp")

START_LR, END_LR = 1e-7, 10.0
# A few hundred steps resolve the curve to a few dozen points per decade; tests lower it.
MAX_STEPS = 300
# fastai's smoothing: the loss averaged over about the last 1 / (1 - 0.98) = 50 steps (bias-corrected).
SMOOTHING = 0.98
DIVERGE_FACTOR = 4.0  # the smoothed loss past 4x its minimum: the rates beyond only blow the weights up
FOLDER_SUFFIX = "-lr-find"
COLUMNS = ["lr", "loss", "smoothed"]


@dataclass
class ExponentialRamp:
    """The finder's rates, in the place of the run's LRSchedule (`at(step)`, as the trainer's step reads it):
    `start` at step 0, rising exponentially to `end` at step `steps` - 1."""
    start: float
    end: float
    steps: int

    def at(self, step: int) -> float:
        return self.start * (self.end / self.start) ** (step / max(1, self.steps - 1))


class StepLoss:
    """Receives a step's sums as trainer.DeviceSums does (`add`), and keeps the batch's mean loss (waiting for the
    device: the finder needs every step's loss to decide whether to go on)."""
    value = math.nan

    def add(self, loss_sum, correct, n: int):
        self.value = float(loss_sum) / max(n, 1)


def lr_find_dir(config: TrainConfig) -> Path:
    """Where the finder of `config` writes: RUNS/NAME-lr-find (NAME: --name, else the name a run would get)."""
    return Path(config.runs_dir) / f"{config.name or default_run_name(config.arch)}{FOLDER_SUFFIX}"


def cycled_batches(s: Session, steps: int) -> Iterator[tuple]:
    """`steps` training batches of the session, as its epochs draw them (shuffled, augmentation-ready, the
    --balance sampler), epoch after epoch when one holds fewer."""
    cfg, done = s.config, 0
    for epoch in itertools.count(1):
        per_epoch = data.count_batches(len(s.data.train_idx), cfg.batch_size, drop_last=True)
        for batch in data.batches(s.data.pixels, s.data.labels, s.data.train_idx, cfg.batch_size, s.rt.device,
                                  shuffle=True, seed=cfg.seed, epoch=epoch, drop_last=True,
                                  stop_step=min(per_epoch, steps - done), balance=cfg.balance == "sampler"):
            yield batch
            done += 1
        if done >= steps:
            return


def lr_range_test(s: Session, step: Callable, steps: int = MAX_STEPS, start_lr: float = START_LR,
                  end_lr: float = END_LR) -> Iterator[dict]:
    """The range test on session `s`: its rows as they come, one per step ({"lr", "loss", "smoothed"};
    `list(...)` for all of them). `step(session, x, y, i, sums)` (trainer._step) trains the session's model on a
    batch at the rate its schedule gives for step i (here the exponential ramp) and returns that rate. Stops after
    `steps`, or once the smoothed loss is not finite or passes DIVERGE_FACTOR x its minimum (that row included)."""
    # A copy of the session with the finder's rates and no weight average; the model and optimiser are the
    # session's own, built for this test alone. The whole model trains (--freeze-epochs' frozen start is not
    # repeated): the rate found is the one the unfrozen network takes.
    trial = dataclasses.replace(s, schedule=ExponentialRamp(start_lr, end_lr, steps), ema=None)
    trial.model.train()
    average, best = 0.0, math.inf
    for i, (x, y) in enumerate(cycled_batches(s, steps)):
        loss = StepLoss()
        lr = step(trial, x, y, i, loss)
        average = SMOOTHING * average + (1 - SMOOTHING) * loss.value
        smoothed = average / (1 - SMOOTHING ** (i + 1))  # the bias correction: early steps average fewer losses
        yield {"lr": lr, "loss": loss.value, "smoothed": smoothed}
        if not math.isfinite(smoothed) or smoothed > DIVERGE_FACTOR * best:
            return
        best = min(best, smoothed)


def landmarks(rows: list[dict]) -> tuple[float | None, float]:
    """(the rate where the smoothed loss fell fastest against log(rate), or None when it never fell; the rate of
    its minimum). The steepest descent is sought from a tenth of the way in (the first averages rest on few
    losses) up to the minimum (what follows is the divergence)."""
    lrs = np.array([r["lr"] for r in rows], dtype=float)
    smoothed = np.array([r["smoothed"] for r in rows], dtype=float)
    finite = np.isfinite(smoothed)
    if not finite.any():
        raise DataError("the learning-rate finder's loss was never finite: try --precision fp32")
    lowest = int(np.nanargmin(np.where(finite, smoothed, np.nan)))
    first = min(len(rows) // 10, lowest)
    window = slice(first, lowest + 1)
    if lowest + 1 - first < 3:
        return None, float(lrs[lowest])
    slopes = np.gradient(smoothed[window], np.log(lrs[window]))
    steepest = int(np.argmin(slopes))
    return (float(lrs[window][steepest]) if slopes[steepest] < 0 else None), float(lrs[lowest])


def suggest_lr(rows: list[dict]) -> tuple[float, str]:
    """The rate to train with (two significant figures) and the rule that chose it: a tenth of the rate at the
    smoothed loss's minimum (said to be no real finding when the loss never fell)."""
    steepest, minimum = landmarks(rows)
    if steepest is None:
        return _round(minimum / 10), "the loss never fell, so this says little: a tenth of the rate at its minimum"
    if minimum == rows[-1]["lr"]:
        return _round(minimum / 10), "a tenth of the last rate tried: the loss was still falling there"
    return _round(minimum / 10), "a tenth of the rate at the smoothed loss's minimum"


def _round(rate: float) -> float:
    return float(f"{rate:.1e}")


def rate_text(rate: float) -> str:
    """A rate as the log writes it: 2.1e-3."""
    mantissa, exponent = f"{rate:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# ----------------------------------------------------------------------------------------------
# Its files, and the entry point
# ----------------------------------------------------------------------------------------------

def write_rows(path: Path, rows: list[dict]):
    """lr_find.csv: one row per step, the rate, its batch's loss and the smoothed loss."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows({k: f"{r[k]:.6g}" for k in COLUMNS} for r in rows)
    atomic_write(path, write)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(r[k]) for k in COLUMNS} for r in csv.DictReader(f)]


def plot_lr_find(folder: Path) -> Path:
    """Draw lr_find.png from the folder's lr_find.csv: the loss of each step and the smoothed loss against the
    rate (log scale), the suggested rate, the minimum and the steepest descent marked."""
    folder = Path(folder)
    rows = read_rows(folder / "lr_find.csv")
    lrs, smoothed = [r["lr"] for r in rows], [r["smoothed"] for r in rows]
    suggested, rule = suggest_lr(rows)
    steepest, minimum = landmarks(rows)
    fig, ax = runs.new_figure(figsize=(7, 4.5))
    ax.plot(lrs, [r["loss"] for r in rows], color="C0", alpha=0.3, linewidth=1, label="loss of each step")
    ax.plot(lrs, smoothed, color="C0", label="smoothed loss")
    ax.axvline(suggested, color="C3", linestyle="--", label=f"suggested --lr {rate_text(suggested)} ({rule})")
    ax.axvline(minimum, color="0.5", linestyle=":", label=f"minimum at {rate_text(minimum)}")
    if steepest is not None:
        ax.axvline(steepest, color="C2", linestyle=":", label=f"fell fastest at {rate_text(steepest)}")
    finite = [v for v in smoothed if math.isfinite(v)]
    # Past DIVERGE_FACTOR x the minimum the curve only says "too high": the axis keeps the part that matters.
    low = min(finite + [r["loss"] for r in rows if math.isfinite(r["loss"])])
    high = max(finite[0], min(max(finite), DIVERGE_FACTOR * min(finite)))
    ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.1 * (high - low + 1e-12))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"learning-rate range test: {folder.name}")
    fig.tight_layout()
    runs._save_figure(fig, folder / "lr_find.png")
    return folder / "lr_find.png"


def find_lr(config: TrainConfig, rt: Runtime, script_defaults: dict, step: Callable,
            notes: tuple[str, ...] = (), follow_data: frozenset = frozenset()) -> Path:
    """--find-lr: the range test on the session `config` would train (`step`: trainer._step; `notes`: the options
    the command line settled, for the log), its files in RUNS/NAME-lr-find/, and the command that trains with the
    suggested rate; returns that folder."""
    if rt.distributed:  # DistributedDataParallel would need every process in each step: one process does it all
        raise OptionError("the learning-rate finder runs in one process, not under torchrun (the rate it suggests for "
                          "a --batch-size, the global batch, holds for torchrun too)", option="find_lr",
                          fix="start {flag} with python")
    folder = lr_find_dir(config)
    if (folder / "run.json").exists() or (folder / "last.pt").exists():
        raise DataError(f"{folder} holds a training run, not a learning-rate finder's results: choose another --name")
    s, _, _ = prepare_session(config, rt, folder, follow_data)  # the batch size the run would choose
    log.info("lr finder: %s on %s (%s), %d training images in batches of %d: the rate rises from %s to %s over up "
             "to %d steps, stopping when the smoothed loss passes %gx its minimum; nothing trained is kept",
             config.arch, rt.device, s.spec.compute, len(s.data.train_idx), config.batch_size, rate_text(START_LR),
             rate_text(END_LR), MAX_STEPS, DIVERGE_FACTOR)
    for note in notes:
        log.info(note)
    rows = run_range_test(s, step)
    write_results(s, folder, rows, script_defaults)
    return folder


def run_range_test(s: Session, step: Callable) -> list[dict]:
    """The rows of the range test, with a progress bar; Ctrl-C ends it early, keeping the rows so far."""
    rows = []
    bar = tqdm(total=MAX_STEPS, desc="lr finder", unit="batch", disable=not s.config.progress, leave=False,
               dynamic_ncols=True)
    try:
        for row in lr_range_test(s, step, MAX_STEPS):
            rows.append(row)
            bar.update()
            bar.set_postfix(lr=f"{row['lr']:.1e}", loss=f"{row['smoothed']:.4f}", refresh=False)
    except KeyboardInterrupt:
        log.warning("lr finder: stopped by Ctrl-C after %d steps; suggesting from those", len(rows))
    finally:
        bar.close()
    if not rows:
        raise DataError("the learning-rate finder stopped before its first step")
    return rows


def diverged(rows: list[dict]) -> bool:
    """Whether the range test ended on divergence: its last smoothed loss not finite or past DIVERGE_FACTOR x the
    minimum before it."""
    last, before = rows[-1]["smoothed"], [r["smoothed"] for r in rows[:-1] if math.isfinite(r["smoothed"])]
    return not math.isfinite(last) or bool(before) and last > DIVERGE_FACTOR * min(before)


def write_results(s: Session, folder: Path, rows: list[dict], script_defaults: dict):
    """lr_find.csv, lr_find.png and lr_find.json (the suggestion, its rule, both landmarks, the command) in
    `folder`, and the log's account of them, ending in the command that trains with the suggestion."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / "lr_find.csv", rows)
    rows = read_rows(folder / "lr_find.csv")  # what the figure is drawn from, so that it marks the same rate
    suggested, rule = suggest_lr(rows)
    steepest, minimum = landmarks(rows)
    config = s.config
    base = folder.name[:-len(FOLDER_SUFFIX)]  # the run the command trains sits beside its finder's folder
    command = runs.run_command({**dataclasses.asdict(config), "name": base, "lr": suggested}, script_defaults)
    stopped = f"all {MAX_STEPS} steps" if len(rows) >= MAX_STEPS else \
        "the smoothed loss diverged" if diverged(rows) else "stopped early"
    atomic_write_text(folder / "lr_find.json", json.dumps({
        "arch": config.arch, "suggested_lr": suggested, "rule": rule, "steepest_lr": steepest, "min_loss_lr": minimum,
        "steps": len(rows), "diverged": diverged(rows), "max_steps": MAX_STEPS, "start_lr": START_LR,
        "end_lr": END_LR, "batch_size": config.batch_size, "mode": str(s.spec.compute), "command": command}, indent=2))
    plot_lr_find(folder)
    log.info("lr finder: %d steps (%s), up to %s -> %s (lr_find.csv, lr_find.png)", len(rows), stopped,
             rate_text(rows[-1]["lr"]), folder)
    log.info("lr finder: loss fell fastest at %s, its minimum at %s; suggested --lr %s (%s)",
             "n/a (it never fell)" if steepest is None else rate_text(steepest), rate_text(minimum),
             rate_text(suggested), rule)
    log.info("train with: %s", command)
