"""Where and how training runs, decided once before the loop: the device, the torchrun process group, and
the compute format (precision and memory format), measured when --precision / --channels-last say auto."""
from __future__ import annotations

import copy
import logging
import os
import shutil
import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from errors import SetupError

log = logging.getLogger("imgcomp")


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
            raise SetupError(f"--device {device}: CUDA is not available on this machine")
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
    """The formats that --precision and --channels-last allow on `device`."""
    if precision == "auto":
        # fp16 needs loss scaling and overflows more easily; it is used only when asked for.
        precisions = ["fp32", "bf16"] if device.type == "cpu" or torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    else:
        precisions = [precision]
    formats = {"auto": [False, True], "on": [True], "off": [False]}[channels_last]
    return [ComputeFormat(p, cl) for p in precisions for cl in formats]


def measure_formats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, modes: list[ComputeFormat],
                    device: torch.device, warmup: int = 2, min_steps: int = 5, max_steps: int = 15,
                    budget_s: float = 60.0) -> dict[ComputeFormat, float]:
    """Seconds of a training step (forward, backward, AdamW) of a copy of `model` on the batch (x, y) in each
    format: the mean of the timed steps without the slowest one, since a run's time is the sum of its steps
    (bf16 steps of some models are bimodal: a median hides their slow half). The model itself is left untouched.

    The formats take turns, step by step, so a burst of load from elsewhere on the machine hits them alike.
    The first `warmup` rounds are not timed (kernels are built and autotuned there). After `min_steps` timed
    rounds, formats more than 25% slower than the best are dropped; measuring stops when one leads the next by
    more than 10%, or after `max_steps` rounds, or once `budget_s` seconds of timed steps have passed. Close
    formats need the extra rounds because single steps on a shared machine are noisy (BENCHMARKS.md)."""
    trials = {}
    for mode in modes:
        trial = copy.deepcopy(model).to(device, memory_format=mode.memory_format).train()
        trials[mode] = (trial, torch.optim.AdamW(trial.parameters(), lr=0.0, weight_decay=0.0),
                        torch.amp.GradScaler(device.type, enabled=mode.precision == "fp16"),
                        x.to(device, memory_format=mode.memory_format), y.to(device))
    times: dict[ComputeFormat, list[float]] = {mode: [] for mode in modes}
    active, spent = list(modes), 0.0
    for round_ in range(warmup + max_steps):
        for mode in active:
            trial, opt, scaler, xb, yb = trials[mode]
            sync(device)
            start = time.perf_counter()
            with mode.autocast(device):
                loss = F.cross_entropy(trial(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if round_ >= warmup:
                times[mode].append(time.perf_counter() - start)
                spent += times[mode][-1]
        if round_ + 1 < warmup + min_steps:
            continue
        ranked = sorted((step_time(times[m]), i) for i, m in enumerate(active))
        active = [active[i] for t, i in ranked if t <= 1.25 * ranked[0][0]]
        if len(active) == 1 or ranked[1][0] > 1.10 * ranked[0][0] or spent >= budget_s:
            break
    return {mode: step_time(t) for mode, t in times.items()}


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


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_format(precision: str, channels_last: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  rt: Runtime) -> tuple[ComputeFormat, dict]:
    """The compute format of a run: fixed by the flags when they allow one, else measured on a copy of `model`
    with the batch (x, y). Returns it and how it was decided ({"how": "fixed by flags"} or {"how": "measured",
    "ms_per_step": {format: ms}}), which the run records in run.json."""
    modes = candidate_formats(precision, channels_last, rt.device)
    if len(modes) == 1:
        return modes[0], {"how": "fixed by flags"}
    times = measure_formats(model, x, y, modes, rt.device)
    best = pick_format(times)
    if rt.distributed:  # every process must run the same format: rank 0's measurement decides
        box = [best]
        dist.broadcast_object_list(box, src=0)
        best = box[0]
    log.info("precision auto: %s -> using %s", ", ".join(f"{m} {t * 1000:.0f} ms/step" for m, t in times.items()), best)
    return best, {"how": "measured", "ms_per_step": {str(m): round(t * 1000, 2) for m, t in times.items()}}


def compile_model(model: nn.Module, rt: Runtime) -> nn.Module:
    """torch.compile for training. It shares the parameters of `model`, whose state_dict (without the compiled
    wrapper's "_orig_mod." prefix) is what checkpoints keep; evaluation runs the plain model."""
    if rt.device.type == "cpu":
        import torch._inductor.config as inductor_config
        wanted = inductor_config.cpp.cxx  # what inductor will run: $CXX, else g++ (clang++ on macOS)
        names = [c for c in (wanted if isinstance(wanted, (list, tuple)) else (wanted,)) if c]
        if not any(shutil.which(c) for c in names):
            raise SetupError(f"--compile on the CPU needs a C++ compiler ({' or '.join(names)}, set by $CXX) and "
                             "found none on the PATH: install one (e.g. apt-get install g++) or train without "
                             "compiling (--no-compile)")
    if rt.is_main:
        log.info("--compile: compiling the model; the first training step takes longer")
    return torch.compile(model)


def all_reduce(values: list[float], rt: Runtime) -> list[float]:
    """`values` summed over every process."""
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device if rt.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def any_process(flag: bool, rt: Runtime) -> bool:
    """True on every process when `flag` is true on any of them."""
    if not rt.distributed:
        return flag
    t = torch.tensor([float(flag)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
