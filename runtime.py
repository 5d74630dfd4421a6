"""Where training runs and as what, decided once before the loop: the device (and its cuDNN settings), the
torchrun process group and what its processes share (`all_reduce`, `any_process`), and compiling the model
(torch.compile, CUDA graphs). The compute format (precision and memory format) is compute.py's."""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from errors import OptionError, SetupError

log = logging.getLogger("imgcomp")
_IMPORTED = time.perf_counter()


def seconds_since_start() -> float:
    """Seconds since this process started (imports included), from /proc on Linux; elsewhere since this module
    was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return float(Path("/proc/uptime").read_text().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED


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


DEVICES = "auto, cpu, cuda or cuda:N"


def check_device(name: str) -> str:
    """A device option's value (--device): auto, cpu, cuda or cuda:N; anything else is an OptionError."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise OptionError(f"not a device: expected {DEVICES} (N: the GPU's number, from 0)", option="device",
                          value=name)
    return name


def setup_runtime(device: str = "auto", deterministic: bool = False, cudnn_benchmark: bool = False) -> Runtime:
    """Pick the device, and join the torchrun process group when launched by torchrun. `deterministic`: the
    same results run after run on a GPU too (deterministic algorithms, no cuDNN autotuning, no TF32), slower.
    `cudnn_benchmark`: cuDNN tries every algorithm of each new convolution shape once and keeps the fastest
    (see `no_autotune` for where it never does)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode needs it
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op without such a kernel warns, not fails
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if check_device(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SetupError("CUDA is not available on this machine", option="device", value=device)
        dev = torch.device("cuda", local_rank if world_size > 1 else (dev.index or 0))
        if dev.index >= torch.cuda.device_count():
            raise SetupError(f"this machine has no GPU {dev.index}: it has {torch.cuda.device_count()} (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})", option="device", value=device)
        torch.cuda.set_device(dev)
        # Autotuning is off unless asked for: it runs every algorithm of each distinct convolution shape on its
        # first use, and models such as ReXNet (a different channel count in each block) have dozens of shapes,
        # forward and backward: the first steps wait on all of them.
        torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
    if world_size > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cpu":  # share the cores between the processes of this machine
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return Runtime(dev, int(os.environ.get("RANK", "0")), world_size, local_rank)


def no_autotune():
    """A context without cuDNN autotuning (the other cuDNN settings unchanged): where shapes are many or seen
    once (the format trial's copies, evaluation's batches and its last, smaller one), tuning each would cost
    more than it saves."""
    return torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                      deterministic=torch.backends.cudnn.deterministic,
                                      allow_tf32=torch.backends.cudnn.allow_tf32)


def cuda_graphs(rt: Runtime) -> bool:
    """Whether compiling captures the training step in CUDA graphs (torch.compile's "reduce-overhead"): on a
    GPU in one process, where a small model's step is bound by launching its kernels one by one. Not under
    torchrun: DistributedDataParallel's gradient all-reduce runs outside the graphs."""
    return rt.device.type == "cuda" and not rt.distributed


def sync(device: torch.device):
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_model(model: nn.Module, rt: Runtime) -> nn.Module:
    """torch.compile for training. It shares the parameters of `model`, whose state_dict (without the compiled
    wrapper's "_orig_mod." prefix) is what checkpoints keep; evaluation runs the plain model. On a GPU in one
    process its forward and backward passes replay as CUDA graphs (`cuda_graphs`): the loop then marks where
    each step begins (torch.compiler.cudagraph_mark_step_begin)."""
    if rt.device.type == "cpu":
        import torch._inductor.config as inductor_config
        wanted = inductor_config.cpp.cxx  # what inductor will run: $CXX, else g++ (clang++ on macOS)
        names = [c for c in (wanted if isinstance(wanted, (list, tuple)) else (wanted,)) if c]
        if not any(shutil.which(c) for c in names):
            raise SetupError(f"torch.compile on the CPU needs a C++ compiler ({' or '.join(names)}, set by $CXX) "
                             "and found none on the PATH: install one (e.g. apt-get install g++)", option="compile",
                             fix="or train without {flag}")
    mode = "reduce-overhead" if cuda_graphs(rt) else None
    if rt.is_main:
        log.info("compiling the model%s; the first training step takes longer",
                 ", its steps captured in CUDA graphs" if mode else "")
    return torch.compile(model, mode=mode)


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
