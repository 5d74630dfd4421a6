"""Defaults that follow the data: the image size, batch size, learning rate and number of epochs of a new run, for
each of them that the command line did not give. Each train_<arch>.py holds its architecture's own recipe (its
epochs and learning rate for plenty of data at batch 128, the largest size it is taken at); here they are fitted to
the competition at hand, and every choice comes with the reason the log states and run.json records.

    size, why = choose_img_size(files, cap=64, device_type="cpu")
    plan = fit_schedule(config, n_train=1621, world_size=1, auto={"batch_size", "epochs", "lr"})
"""
from __future__ import annotations

import math
import statistics
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

# The images' sizes are read from this many files, spread over the dataset: enough for a median.
SIZE_SAMPLE = 64
# On a CPU an automatic size stops here: each doubling of the side costs about four times the time of a step.
CPU_MAX_IMG_SIZE = 32
# Architectures whose input size must be a multiple of this (timm's CoAtNet sizes its attention windows so).
SIZE_MULTIPLE = {"coatnet": 32}
# The batch the scripts' learning rates are tuned at, and the largest batch chosen automatically.
BASE_BATCH = 128
MIN_AUTO_BATCH = 16
# An epoch of fewer steps leaves BatchNorm and the optimiser too few updates; a run of fewer steps stays near
# chance on small data (a 3-epoch run of 12 steps each did).
MIN_STEPS_PER_EPOCH = 25
MIN_STEPS = 1000
MAX_AUTO_EPOCHS = 300


# ----------------------------------------------------------------------------------------------
# The image size
# ----------------------------------------------------------------------------------------------

def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from a PNG, JPEG, GIF or BMP file's header without decoding it; None for other formats
    or a header that cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n":
                w, h = struct.unpack(">II", head[16:24])
                return h, w
            if head[:6] in (b"GIF87a", b"GIF89a"):
                w, h = struct.unpack("<HH", head[6:10])
                return h, w
            if head[:2] == b"BM":
                w, h = struct.unpack("<ii", head[18:26])
                return abs(h), w
            if head[:2] == b"\xff\xd8":
                return _jpeg_size(f)
    except (OSError, struct.error, IndexError):
        return None
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    """Walk a JPEG's markers to its frame header (SOF0..SOF15 but DHT, JPG and DAC)."""
    f.seek(2)
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        while len(marker) == 2 and marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + f.read(1)
        if len(marker) < 2:
            return None
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:
            continue
        length = struct.unpack(">H", f.read(2))[0]
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", f.read(5)[1:5])
            return h, w
        f.seek(length - 2, 1)


def image_sizes(files: list[Path], sample: int = SIZE_SAMPLE) -> list[tuple[int, int]]:
    """(height, width) of up to `sample` files spread evenly over `files`: from their headers, else decoded."""
    picked = [files[i] for i in np.linspace(0, len(files) - 1, min(sample, len(files))).round().astype(int)]
    sizes = []
    for path in picked:
        size = header_size(path)
        if size is None:
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            size = img.shape[:2] if img is not None else None
        if size and min(size) > 0:
            sizes.append((int(size[0]), int(size[1])))
    return sizes


def choose_img_size(files: list[Path], cap: int, device_type: str, arch: str = "", min_size: int = 8) -> tuple[int, str]:
    """The size to train at when --img-size is not given: the median of the training images' shorter sides, at most
    `cap` (the script's --max-img-size; on a CPU at most CPU_MAX_IMG_SIZE), rounded to the architecture's size
    multiple; with the reason, for the log."""
    sizes = image_sizes(files)
    limit, limit_why = cap, f"the script's --max-img-size {cap}"
    if device_type == "cpu" and cap > CPU_MAX_IMG_SIZE:
        limit, limit_why = CPU_MAX_IMG_SIZE, (f"on a CPU automatic sizes stop at {CPU_MAX_IMG_SIZE} px: each doubling "
                                              "costs about 4x the time; give --img-size for more")
    step = SIZE_MULTIPLE.get(arch, 1)
    if not sizes:
        return _on_multiple(max(min_size, limit), step, limit), "no image size could be read"
    median = int(statistics.median(min(s) for s in sizes))
    size = _on_multiple(max(min_size, min(median, limit)), step, limit)
    why = f"the training images' median (shorter side) is {median} px"
    if median > limit:
        why += f"; {limit_why}"
    if step > 1 and size != min(median, limit):
        why += f"; {arch} needs a multiple of {step}"
    return size, why


def _on_multiple(size: int, step: int, limit: int) -> int:
    """`size` on a multiple of `step`: the nearest, or the one below when the nearest passes `limit` (at least
    `step`)."""
    if size % step == 0:
        return size
    nearest = round(size / step) * step
    return max(step, nearest if nearest <= limit else size // step * step)


# ----------------------------------------------------------------------------------------------
# Batch size, learning rate, epochs
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """The batch size, learning rate and epochs a run trains with, and why each (None: as given)."""
    batch_size: int
    lr: float
    epochs: int
    reasons: dict


def choose_batch_size(n_train: int, world_size: int, base: int = BASE_BATCH) -> tuple[int, str | None]:
    """The largest power of two up to `base` that gives an epoch at least MIN_STEPS_PER_EPOCH steps (at least
    MIN_AUTO_BATCH, and at least 2 images per process); None as the reason when `base` already does."""
    batch = base
    while batch // 2 >= max(MIN_AUTO_BATCH, 2 * world_size) and n_train // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    if batch == base:
        return batch, None
    return batch, (f"{n_train:,} training images give {n_train // batch} steps an epoch at batch {batch} "
                   f"({n_train // base} at {base}; at least {MIN_STEPS_PER_EPOCH} wanted)")


def scale_lr(lr: float, batch: int, optimizer: str, base: int = BASE_BATCH) -> tuple[float, str | None]:
    """The script's learning rate (tuned at batch `base`) for `batch`: by the square root of the ratio for AdamW
    (Malladi et al., https://arxiv.org/abs/2205.10287), linearly for SGD (Goyal et al.,
    https://arxiv.org/abs/1706.02677)."""
    if batch == base:
        return lr, None
    ratio = batch / base
    scaled = lr * (math.sqrt(ratio) if optimizer == "adamw" else ratio)
    rule = f"by the square root of {batch}/{base}" if optimizer == "adamw" else f"linearly, by {batch}/{base}"
    return float(f"{scaled:.3g}"), f"the script's {lr:g} at batch {base}, scaled {rule}"


def choose_epochs(epochs: int, steps_per_epoch: int) -> tuple[int, str | None]:
    """The script's epochs, raised so that the run has at least MIN_STEPS optimiser steps."""
    need = min(MAX_AUTO_EPOCHS, math.ceil(MIN_STEPS / max(steps_per_epoch, 1)))
    if need <= epochs:
        return epochs, None
    return need, (f"the script's {epochs} epochs give {epochs * steps_per_epoch} steps of {steps_per_epoch} on this "
                  f"data; at least {MIN_STEPS} wanted")


def fit_schedule(config, n_train: int, world_size: int, auto: set[str]) -> Plan:
    """The batch size, learning rate and epochs for `config` on `n_train` training images: each option in `auto`
    (not given on the command line) chosen for the data, the others as given."""
    reasons = {}
    batch = config.batch_size
    if "batch_size" in auto:
        batch, reasons["batch_size"] = choose_batch_size(n_train, world_size, config.batch_size)
    lr = config.lr
    if "lr" in auto:
        lr, reasons["lr"] = scale_lr(config.lr, batch, config.optimizer)
    epochs = config.epochs
    if "epochs" in auto:
        epochs, reasons["epochs"] = choose_epochs(config.epochs, max(1, n_train // batch))
    return Plan(batch, lr, epochs, {k: v for k, v in reasons.items() if v})


def apply_plan(config, plan: Plan):
    return replace(config, batch_size=plan.batch_size, lr=plan.lr, epochs=plan.epochs)


# ----------------------------------------------------------------------------------------------
# Augmentation: shifts and orientations where the images say the class does not depend on place or angle
# ----------------------------------------------------------------------------------------------

# Images the layout is read from (spread over the training split): enough for an average image.
LAYOUT_SAMPLE = 256
# The training images' average image, its spread over the pixels against one image's own spread: where it is below
# this, the class does not sit in one place (measured: objects placed at random 0.07-0.08, textures 0.07, centred
# silhouettes 0.71, Fashion-MNIST 0.63; bench/competitions.py writes the first three).
FLAT_AVERAGE = 0.25
# How much the images' edges prefer some directions (the 2nd and 4th circular moments of the gradient directions,
# weighted by their strength): where below this, the images have no up or across (measured: objects at random
# angles 0.14, textures 0.13 (the square pixel grid alone gives about that), centred upright silhouettes 0.20,
# Fashion-MNIST 0.47).
ISOTROPIC_EDGES = 0.18
# Shifts up to this share of the side, where the class does not sit in one place.
SHIFT_SHARE = 0.1


def layout_stats(pixels: np.ndarray, indices: np.ndarray, sample: int = LAYOUT_SAMPLE) -> tuple[float, float]:
    """(flatness of the average image, anisotropy of the edges) of up to `sample` of the uint8 images
    `pixels[indices]` (N, C, S, S): see FLAT_AVERAGE and ISOTROPIC_EDGES."""
    chosen = np.asarray(indices)[np.linspace(0, len(indices) - 1, min(sample, len(indices))).astype(int)]
    gray = np.stack([np.asarray(pixels[int(i)], np.float32).mean(0) for i in chosen])
    flatness = float(gray.mean(0).std() / max(float(gray.std((1, 2)).mean()), 1e-6))
    moments, total = np.zeros(2, np.complex128), 0.0
    for img in gray:
        gx, gy = cv2.Sobel(img, cv2.CV_32F, 1, 0), cv2.Sobel(img, cv2.CV_32F, 0, 1)
        strength, angle = np.hypot(gx, gy), np.arctan2(gy, gx)
        moments += [(strength * np.exp(2j * angle)).sum(), (strength * np.exp(4j * angle)).sum()]
        total += float(strength.sum())
    return flatness, float(np.abs(moments).max() / max(total, 1e-6))


def choose_augmentation(dihedral: bool, translate: int, img_size: int, layout: tuple[float, float],
                        auto: set[str]) -> tuple[bool, int, dict]:
    """Training augmentation's shifts and orientations, for each of "translate" and "dihedral" in `auto` (not given),
    from the training images' `layout` (flatness, anisotropy: `layout_stats`): shifts of a tenth of the side where
    their average is flat (the class is not in one place), and all eight orientations (flips and right-angle turns)
    where their edges also have no preferred direction (no up: objects at any angle, tiles, textures, micrographs);
    else the script's. Returns (dihedral, translate, option -> why)."""
    flatness, anisotropy = layout
    reasons = {}
    seen = f"the training images' average is flat ({flatness:.2f}; under {FLAT_AVERAGE:g})"
    if "translate" in auto and flatness < FLAT_AVERAGE and round(img_size * SHIFT_SHARE) > translate:
        translate = round(img_size * SHIFT_SHARE)
        reasons["translate"] = f"{seen}: the class is not in one place, so the network sees it shifted"
    if "dihedral" in auto and flatness < FLAT_AVERAGE and anisotropy < ISOTROPIC_EDGES and not dihedral:
        dihedral = True
        reasons["dihedral"] = (f"{seen} and their edges have no preferred direction ({anisotropy:.2f}; under "
                               f"{ISOTROPIC_EDGES:g}): no up or across, so the network sees each image in all 8 "
                               "orientations (flips and right-angle turns)")
    return dihedral, translate, reasons


def choose_head_pool(head_pool: str, layout: tuple[float, float], auto: set[str]) -> tuple[str, dict]:
    """The CNN's head (models/cnn.py) when "head_pool" is in `auto`: the last feature map itself ("map") where the
    training images' average is not flat (things sit in place, so where a feature is found tells the classes apart:
    Fashion-MNIST's garments), else global pooling ("global": objects anywhere). Returns (head_pool, option -> why)."""
    flatness = layout[0]
    if "head_pool" not in auto:
        return head_pool, {}
    chosen = "map" if flatness >= FLAT_AVERAGE else "global"
    if chosen == "map":
        why = (f"the training images' average is not flat ({flatness:.2f}; {FLAT_AVERAGE:g} or more): things sit in "
               "place, so the dense layers see the whole last feature map (where each feature is)")
    else:
        why = (f"the training images' average is flat ({flatness:.2f}; under {FLAT_AVERAGE:g}): the class is not in "
               "one place, so the dense layers see each feature's average and maximum over the image and its quadrants")
    return chosen, {"head_pool": why}


# ----------------------------------------------------------------------------------------------
# --time-budget
# ----------------------------------------------------------------------------------------------

# Of the time left, this share is planned for epochs: the rest absorbs the machine's noise and the writes after
# the last epoch.
BUDGET_SHARE = 0.92
# Seconds each epoch spends besides its steps and its evaluation: metrics, checkpoints, curves.
EPOCH_OVERHEAD_S = 0.5
# Evaluating an image costs about this share of training on it (a forward pass, no backward, no update).
EVAL_COST = 0.35


def epoch_seconds(step_s: float, steps: int, n_val: int, batch: int) -> float:
    """An epoch's expected seconds: its training steps, its evaluation and its bookkeeping."""
    return steps * step_s + math.ceil(n_val / batch) * step_s * EVAL_COST + EPOCH_OVERHEAD_S


def budget_epochs(budget_s: float, elapsed_s: float, step_s: float, steps: int, n_val: int,
                  batch: int) -> tuple[int, str]:
    """The epochs that fit in `budget_s` seconds from the process's start (`elapsed_s` of them spent setting up),
    at `step_s` seconds a training step; at least one. With the sentence the log states."""
    per_epoch = epoch_seconds(step_s, steps, n_val, batch)
    left = budget_s - elapsed_s
    epochs = max(1, int(left * BUDGET_SHARE / per_epoch + 1e-9))
    why = (f"{epochs} epoch{'s' if epochs > 1 else ''} of {steps} steps fit {budget_s / 60:g} minutes ({step_s * 1000:.0f} ms a step, about "
           f"{per_epoch:.1f} s an epoch with its evaluation; {elapsed_s:.0f} s spent setting up)")
    if left * BUDGET_SHARE < per_epoch:
        why += "; even one epoch does not fit: it trains one"
    return epochs, why


# On a CPU, the epochs a new run's recipe adds for small data (`choose_epochs`) stop at what fits this many minutes
# from the process's start, measured on its second epoch; never below the script's own epochs. (ResNet-18's 1000
# steps at 32 px take 7-8 minutes on an AVX-512/AMX CPU and about 3x that on an AVX2-only one.)
CPU_ADDED_EPOCHS_MINUTES = 9.0


def cap_added_epochs(minutes: float, elapsed_s: float, epochs_done: int, epoch_s: float, planned: int,
                     floor: int) -> tuple[int, str | None]:
    """The epochs of a run whose recipe raised them to `planned` (from the script's `floor`), after `epochs_done`
    epochs measured at `epoch_s` seconds each: those that fit `minutes` from the start, at least `floor`, at most
    `planned`; with the sentence the log states (None: all fit)."""
    fit = replan_epochs(minutes * 60, elapsed_s, epochs_done, epoch_s, planned)
    if fit >= planned:
        return planned, None
    epochs = max(floor, fit)
    return epochs, (f"{epochs} epochs: the {planned} raised for small data would take about "
                    f"{(elapsed_s + (planned - epochs_done) * epoch_s) / 60:.0f} minutes on this CPU (epoch "
                    f"{epochs_done} took {epoch_s:.1f} s); on a CPU the added epochs stop at what fits "
                    f"{minutes:g} minutes (at least the script's {floor}); give --epochs or --time-budget for more")


def replan_epochs(budget_s: float, elapsed_s: float, epochs_done: int, epoch_s: float, planned: int) -> int:
    """After an epoch measured at `epoch_s` seconds: the epochs the budget holds in all (at least those done)."""
    left = budget_s - elapsed_s
    return max(epochs_done, epochs_done + int(left * BUDGET_SHARE // max(epoch_s, 1e-9))) if planned else planned
