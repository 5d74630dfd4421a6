"""The compute format of a run: its numeric precision (fp32, bf16, fp16) and memory format (channels-last or
not), fixed by the options or, where they say auto, measured on a copy of the model and remembered per model,
batch shape, machine and torch version."""
from __future__ import annotations

import copy
import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from data import user_cache_dir
from fileio import atomic_write_text
from runtime import Runtime, no_autotune, sync

log = logging.getLogger("imgcomp")


@dataclass(frozen=True)
class ComputeFormat:
    """How the model computes: its numeric precision (autocast dtype) and memory format."""
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


def candidate_formats(precision: str, channels_last: str, device: torch.device) -> list[ComputeFormat]:
    """The formats that the `precision` and `channels_last` options ("auto", or one value) allow on `device`."""
    if precision == "auto":
        # The half precision the hardware runs fast: bf16 where it has bf16 units, else fp16 on a GPU (it needs
        # loss scaling and overflows more easily, so it is measured only where bf16 is not fast); a CPU without
        # bf16 kernels gets fp32 alone. Emulated bf16 runs many times slower than fp32: timing even one of its
        # steps would take the measurement far past its budget.
        precisions = ["fp32"] + (["bf16"] if fast_bf16(device) else ["fp16"] if device.type == "cuda" else [])
    else:
        precisions = [precision]
    formats = {"auto": [False, True], "on": [True], "off": [False]}[channels_last]
    return [ComputeFormat(p, cl) for p in precisions for cl in formats]


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a GPU from Ampere on (not by emulation, as older ones do), a
    CPU for which oneDNN has bf16 kernels (AVX-512, or Arm's bf16 instructions; AVX2 alone has none)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the check: measure it
        return True


def measure_formats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, modes: list[ComputeFormat],
                    device: torch.device, warmup: int = 2, min_steps: int = 5, max_steps: int = 15,
                    budget_s: float = 6.0, run_steps: int = 0) -> dict[ComputeFormat, float]:
    """Seconds of a training step (forward, backward, AdamW) of a copy of `model` on the batch (x, y) in each
    format: the mean of the timed steps without the slowest one, since a run's time is the sum of its steps
    (bf16 steps of some models are bimodal: a median hides their slow half). The model itself is left untouched.

    The formats take turns, step by step, so a burst of load from elsewhere on the machine hits them alike.
    The first `warmup` rounds are not timed (kernels are built and autotuned there). After `min_steps` timed
    rounds, formats more than 25% slower than the best are dropped; measuring stops when one leads the next by
    more than 10%, or after `max_steps` rounds, or once `budget_s` seconds have passed since it began (warm-up
    included: a run must start quickly; where even the warm-up outlasts the budget, its last round decides).
    With `run_steps` (the run's steps), a run that the first step's time says is shorter than `budget_s` is not
    worth measuring: only that first format's time is returned.
    Close formats need the extra rounds because single steps on a shared machine are noisy (BENCHMARKS.md);
    the decision is remembered (`choose_format`), so it is measured once per model, size and machine."""
    # No cuDNN autotuning while measuring: it would tune every convolution of every trial copy; the formats are
    # compared with the same default kernel choice.
    with no_autotune():
        return _measure(model, x, y, modes, device, warmup, min_steps, max_steps, budget_s, run_steps)


# The fewest images a trial batch is cut to when full batches are too slow to compare within the budget.
MIN_TRIAL_BATCH = 8


def _measure(model, x, y, modes, device, warmup, min_steps, max_steps, budget_s, run_steps) -> dict[ComputeFormat, float]:
    trials = {}
    for mode in modes:
        trial = copy.deepcopy(model).to(device, memory_format=mode.memory_format).train()
        trials[mode] = (trial, torch.optim.AdamW(trial.parameters(), lr=0.0, weight_decay=0.0),
                        torch.amp.GradScaler(device.type, enabled=mode.precision == "fp16"),
                        x.to(device, memory_format=mode.memory_format), y.to(device))
    began = time.perf_counter()
    first = _trial_step(modes[0], trials[modes[0]], device)  # kernels are built here: the slowest step
    if run_steps and first * run_steps < budget_s:
        return {modes[0]: first}  # the whole run, at this step's time, beats the trial
    # Steps so slow that the formats could not take (1 + min_steps) turns in the budget (a slow CPU at a large size)
    # are compared on part of the batch; a step's time grows with its images, so the times are scaled back.
    keep = len(x)
    if len(modes) > 1 and first * len(modes) * (1 + min_steps) > budget_s:
        keep = max(MIN_TRIAL_BATCH, int(len(x) * budget_s / (first * len(modes) * (1 + min_steps))))
    if keep < len(x):
        trials = {m: (*t[:3], t[3][:keep], t[4][:keep]) for m, t in trials.items()}
    times = _take_turns(trials, modes, device, warmup, min_steps, max_steps, budget_s, began)
    return {mode: t * len(x) / min(keep, len(x)) for mode, t in times.items()}


def _trial_step(mode: ComputeFormat, trial: tuple, device: torch.device) -> float:
    """Seconds of one training step of a trial (model, optimiser, scaler, batch) in `mode`."""
    model, opt, scaler, xb, yb = trial
    sync(device)
    start = time.perf_counter()
    with mode.autocast(device):
        loss = F.cross_entropy(model(xb), yb)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def _take_turns(trials, modes, device, warmup, min_steps, max_steps, budget_s, began) -> dict[ComputeFormat, float]:
    """The formats' step times, measured in turns until one leads, `max_steps` rounds, or `budget_s` from `began`
    is spent."""
    times: dict[ComputeFormat, list[float]] = {mode: [] for mode in modes}
    last: dict[ComputeFormat, float] = {}
    active, previous = list(modes), time.perf_counter() - began
    for round_ in range(warmup + max_steps):
        for mode in active:
            last[mode] = _trial_step(mode, trials[mode], device)
            if round_ >= warmup:
                times[mode].append(last[mode])
        elapsed = time.perf_counter() - began
        # Out of time: past the budget, or (once something is timed) another round would pass it.
        out_of_time = elapsed >= budget_s or (any(times.values()) and 2 * elapsed - previous > budget_s)
        previous = elapsed
        if round_ == 0 and warmup > 1 and elapsed * (warmup + 1) > budget_s:
            warmup = 1  # slow steps: one warm-up round (the kernels are built there), so a timed round fits
        if out_of_time and not any(times.values()):  # slow steps: the warm-up rounds are all there is
            return dict(last)
        if round_ + 1 < warmup + min_steps and not out_of_time:
            continue
        ranked = sorted((step_time(times[m]) if times[m] else last[m], i) for i, m in enumerate(active))
        active = [active[i] for t, i in ranked if t <= 1.25 * ranked[0][0]]
        if len(active) == 1 or ranked[1][0] > 1.10 * ranked[0][0] or out_of_time:
            break
    return {mode: step_time(t) if t else last[mode] for mode, t in times.items()}


def step_time(times: list[float]) -> float:
    """Mean step time without the slowest step (one pause of the machine should not decide)."""
    return statistics.fmean(sorted(times)[:-1]) if len(times) > 2 else statistics.fmean(times)


def pick_format(times: dict[ComputeFormat, float], tolerance: float = 0.05) -> ComputeFormat:
    """The fastest mode, except that full precision (fp32) wins when it is within `tolerance` of a faster
    reduced-precision mode: a few per cent of speed is not worth bf16/fp16's rounding, and modes that
    close are within the noise of the measurement anyway."""
    best = min(times, key=times.get)
    full = [m for m in times if m.precision == "fp32" and times[m] <= (1 + tolerance) * times[best]]
    return min(full, key=times.get) if full else best


def format_memory_path() -> Path:
    """Where measured compute formats are remembered: beside the image caches in the user's cache folder."""
    return user_cache_dir() / "compute-formats.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def format_key(arch: str, x: torch.Tensor, modes: list[ComputeFormat], device: torch.device) -> str:
    """What a measured format depends on: the architecture, the batch's shape (size, channels, batch), the
    formats allowed, the device and torch's version."""
    return "|".join([arch, "x".join(str(d) for d in x.shape), ",".join(str(m) for m in modes), device_name(device),
                     f"torch {torch.__version__}"])


def _remembered(key: str) -> dict | None:
    try:
        entry = json.loads(format_memory_path().read_text()).get(key)
        return entry if isinstance(entry, dict) and "format" in entry else None
    except (OSError, ValueError, AttributeError):
        return None


def _is_clear(times: dict, best: ComputeFormat) -> bool:
    """Whether the winner leads every other format by more than CLOSE (else the choice is remembered as unsure)."""
    others = [t for m, t in times.items() if m != best]
    return not others or min(others) > (1 + CLOSE) * times[best]


def _with_earlier(entry: dict | None, times: dict) -> tuple[dict, int]:
    """`times` averaged with an earlier, unsure measurement `entry` of the same key (weighted by its count), and the
    number of measurements they make together."""
    if not entry or entry.get("sure", True):
        return times, 1
    count = int(entry.get("measurements", 1))
    earlier = entry.get("ms_per_step", {})
    merged = {m: (t + count * earlier[str(m)] / 1000) / (count + 1) if str(m) in earlier else t
              for m, t in times.items()}
    return merged, count + 1


def _remember(key: str, best: ComputeFormat, times: dict, sure: bool = True, count: int = 1):
    path = format_memory_path()
    try:
        memory = json.loads(path.read_text()) if path.is_file() else {}
        memory = memory if isinstance(memory, dict) else {}
    except (OSError, ValueError):
        memory = {}
    memory[key] = {"format": {"precision": best.precision, "channels_last": best.channels_last},
                   "ms_per_step": {str(m): round(t * 1000, 2) for m, t in times.items()},
                   "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "sure": sure, "measurements": count}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(memory, indent=1))
    except OSError as e:  # remembering is a convenience: a read-only home only means measuring again next time
        log.warning("could not remember the compute format in %s: %s", path, e)


# The trial's budget in seconds (its warm-up included): a run must start quickly.
TRIAL_BUDGET_S = 6.0
# A remembered choice whose formats were this close (relative to the winner) or noisier is measured again on the
# next runs, up to MAX_MEASUREMENTS times in all, and decided by the mean of the measurements.
CLOSE = 0.10
MAX_MEASUREMENTS = 3


def choose_format(precision: str, channels_last: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  rt: Runtime, arch: str = "", run_steps: int = 0) -> tuple[ComputeFormat, dict]:
    """The compute format of a run: fixed by the options when they allow one; else remembered from an earlier
    measurement of the same `arch`, batch shape, device and torch version (`format_memory_path`); else measured
    on a copy of `model` with the batch (x, y) and remembered. With torchrun, rank 0 decides for every process.
    Returns it and how it was decided ({"how": "fixed by flags" | "remembered" | "measured", ...}), which the
    run records in run.json and the log states."""
    modes = candidate_formats(precision, channels_last, rt.device)
    if len(modes) == 1:
        return modes[0], {"how": "fixed by flags"}
    decision = None
    if rt.is_main:
        key = format_key(arch, x, modes, rt.device)
        entry = earlier = _remembered(key) if arch else None
        if entry and not entry.get("sure", True) and entry.get("measurements", 1) < MAX_MEASUREMENTS:
            entry = None  # close or noisy last time: measured again (and averaged with it)
        if entry:
            best = ComputeFormat(**entry["format"])
            decision = {"how": "remembered", "ms_per_step": entry.get("ms_per_step", {}),
                        "step_s": entry.get("ms_per_step", {}).get(str(best), 0) / 1000 or None,
                        "measured": entry.get("measured", ""), "file": str(format_memory_path())}
            log.info("compute format: %s, remembered from %s (%s; measured %s)", best, format_memory_path(),
                     ", ".join(f"{m} {t:.0f} ms/step" for m, t in decision["ms_per_step"].items()), decision["measured"])
        else:
            started = time.perf_counter()
            times = measure_formats(model, x, y, modes, rt.device, budget_s=TRIAL_BUDGET_S, run_steps=run_steps)
            if len(times) == 1 < len(modes):  # the whole run is shorter than the trial: not worth measuring
                best = next(iter(times))
                log.info("compute format: %s, not measured (the whole run, %d steps of about %.0f ms, is shorter "
                         "than the %g s trial)", best, run_steps, times[best] * 1000, TRIAL_BUDGET_S)
                return _shared(best, {"how": "not measured: the run is shorter than the trial",
                                      "step_s": times[best]}, rt)
            times, count = _with_earlier(earlier, times)
            best = pick_format(times)
            sure = _is_clear(times, best)
            decision = {"how": "measured", "ms_per_step": {str(m): round(t * 1000, 2) for m, t in times.items()},
                        "seconds": round(time.perf_counter() - started, 1), "step_s": times[best], "sure": sure,
                        "measurements": count}
            log.info("compute format: measured %s in %.0f s -> using %s%s",
                     ", ".join(f"{m} {t * 1000:.0f} ms/step" for m, t in times.items()), decision["seconds"], best,
                     "" if sure else f" (close: measured again on the next run{'s' if count + 1 < MAX_MEASUREMENTS else ''}"
                     f", {count} of up to {MAX_MEASUREMENTS} measurements so far)")
            if arch:
                _remember(key, best, times, sure, count)
    return _shared(best, decision, rt)


def _shared(best: ComputeFormat | None, decision: dict | None, rt: Runtime) -> tuple[ComputeFormat, dict]:
    """Rank 0's decision, for every process (they must all run the same format)."""
    if rt.distributed:
        box = [(best, decision) if rt.is_main else None]
        dist.broadcast_object_list(box, src=0)
        best, decision = box[0]
    return best, decision


