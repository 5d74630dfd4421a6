"""What the benchmark scripts share: their flags, timing, tables, targets, the machine's description and
the Markdown they write. Each script runs from the repository root:

    python bench/input_pipeline.py --quick                      # one item, a few minutes
    python bench/run_all.py                                     # every item -> BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the toolkit's modules (data, trainer, runs, predict, ...) live there
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = "data/fashion-mnist"


# ----------------------------------------------------------------------------------------------
# Flags and the demo competition
# ----------------------------------------------------------------------------------------------

def build_parser(doc: str, outputs: bool = True) -> argparse.ArgumentParser:
    """The flags every benchmark takes (`outputs`: also --markdown and --json); each script adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="the demo competition (write it with: python data.py fashion-mnist DIR)")
    parser.add_argument("--quick", action="store_true", help="fewer images, steps and repeats: a few minutes")
    if outputs:
        parser.add_argument("--markdown", metavar="FILE", help="append this benchmark's section to FILE")
        parser.add_argument("--json", metavar="FILE", help="write the targets and their figures to FILE")
    return parser


def demo_dir(path: str) -> Path:
    """The demo competition folder, checked: train.csv, train/, test/ and solution.csv."""
    root = Path(path)
    missing = [name for name in ("train.csv", "train", "test", "solution.csv") if not (root / name).exists()]
    if missing:
        sys.exit(f"error: {root} is not the demo competition (missing {', '.join(missing)}); "
                 f"write it with: python data.py fashion-mnist {root}")
    return root


def archs(parser: argparse.ArgumentParser, value: str | None, default: str | None = None) -> list[str]:
    """The architectures of a comma-separated --archs (`default` when not given, every one when neither is),
    or a parser error naming the unknown ones."""
    from models import MODELS
    names = [a.strip() for a in (value or default or ",".join(MODELS)).split(",") if a.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}; known: {', '.join(MODELS)}")
    return names


def subset_competition(src: Path, dst: Path, n_train: int, n_test: int | None = None) -> Path:
    """A smaller competition in `dst`, in the same CSV layout, whose images are symlinks to the first
    `n_train` training (and `n_test` test) images of `src`; `n_test` None keeps every test image."""
    (dst / "train").mkdir(parents=True, exist_ok=True)
    (dst / "test").mkdir(parents=True, exist_ok=True)
    with open(src / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:n_train + 1]
    with open(dst / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    for ident, _ in rows:
        name = ident if ident.endswith(".png") else ident + ".png"
        os.symlink((src / "train" / name).resolve(), dst / "train" / name)
    for name in ("sample_submission.csv", "solution.csv"):
        with open(src / name, newline="") as f:
            table = list(csv.reader(f))
        keep = table[:1 + n_test] if n_test else table
        with open(dst / name, "w", newline="") as f:
            csv.writer(f).writerows(keep)
        if name == "solution.csv":
            for ident, _ in keep[1:]:
                file = ident if ident.endswith(".png") else ident + ".png"
                os.symlink((src / "test" / file).resolve(), dst / "test" / file)
    return dst


def read_files(files) -> int:
    """Read every file once, so that the timed code finds them in the OS page cache; returns the bytes."""
    total = 0
    for path in files:
        with open(path, "rb") as f:
            total += len(f.read())
    return total


# ----------------------------------------------------------------------------------------------
# Timing and processes
# ----------------------------------------------------------------------------------------------

def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """min-max of repeated measurements, to show how noisy they were."""
    return f"{min(values):,.0f}-{max(values):,.0f}" if len(values) > 1 else ""


def with_spread(values) -> str:
    """The median of repeated measurements, and their range when there are several."""
    return f"{median(values):,.0f}" + (f" ({spread(values)})" if len(values) > 1 else "")


@dataclass
class Finished:
    """A finished subprocess: its exit status, output, wall-clock seconds and peak resident memory; with
    `rss_every`, also (seconds, RSS bytes, the last line printed by then) samples."""
    returncode: int
    output: str
    seconds: float
    max_rss_bytes: int
    rss_samples: list[tuple[float, int, str]] = field(default_factory=list)


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def run_python(args: list, timeout: float | None = None, echo: bool = False, on_line=None,
               rss_every: float | None = None) -> Finished:
    """Run `python ARGS...` from the repository root. The peak RSS is the child's own (os.wait4), not that
    of every child this process ever waited for. `on_line(line)` sees each line as it is printed."""
    args = [str(a) for a in args]
    if echo:
        print("$", " ".join(shlex.quote(a) for a in ["python", *args]), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines, samples, done = [], [], threading.Event()

    def sample():
        while not done.wait(rss_every):
            rss = _rss_bytes(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - start, rss, lines[-1].rstrip() if lines else ""))

    helpers = [threading.Timer(timeout, proc.kill)] if timeout else []
    if rss_every:
        helpers.append(threading.Thread(target=sample, daemon=True))
    for h in helpers:
        h.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line:
                on_line(line)
    except BaseException:
        proc.kill()
        raise
    finally:
        done.set()
        if timeout:
            helpers[0].cancel()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child: Popen must not wait for it again
        proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux
    return Finished(proc.returncode, "".join(lines), time.perf_counter() - start, usage.ru_maxrss * 1024, samples)


def check(finished: Finished, what: str) -> Finished:
    if finished.returncode != 0:
        sys.exit(f"error: {what} failed (exit {finished.returncode}):\n{finished.output[-3000:]}")
    return finished


# ----------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The instruction sets that decide which precision is fast on a CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags]


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def load_average() -> str:
    """The 1-minute load average: above the core count, other work shared the CPU during a measurement."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


class CpuShare:
    """How much of the machine's CPU time went to other processes between start and `other()`: anything
    above a few percent makes timings unreliable, since PyTorch's threads wait for each other."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields))  # user nice system irq softirq steal
        total = busy + fields[3] + fields[4]  # + idle iowait
        own = os.times()  # this process and the children it has waited for
        return busy, total, own.user + own.system + own.children_user + own.children_system

    def other(self) -> float | None:
        """Fraction (0..1) of all cores' time used by other processes since the start."""
        end = self._read()
        if self.start is None or end is None:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy, total = (end[0] - self.start[0]) / tick, (end[1] - self.start[1]) / tick
        return max(0.0, busy - (end[2] - self.start[2])) / total if total > 0 else None


def machine() -> dict:
    import cv2
    import torch
    import torchvision
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch threads": torch.get_num_threads(),
        "features": " ".join(cpu_features()), "memory": f"{memory_gib():.0f} GiB",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "opencv": cv2.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def machine_line() -> str:
    m = machine()
    return (f"{m['cpu']}, {m['cores']} cores ({m['features']}), {m['memory']}, GPU {m['gpu']}; "
            f"Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, OpenCV {m['opencv']}; "
            f"{m['date']}")


# ----------------------------------------------------------------------------------------------
# Tables, targets and the report
# ----------------------------------------------------------------------------------------------

@dataclass
class Target:
    """One of the issue's targets: a measured figure against its threshold."""
    what: str
    value: float | None  # None: could not be measured (the reason goes in `note`)
    threshold: float
    unit: str = "x"
    higher_is_better: bool = True
    note: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def cells(self) -> list[str]:
        sign = ">=" if self.higher_is_better else "<="
        value = "n/a" if self.value is None else f"{self.value:.2f}{self.unit}"
        return [self.what, value, f"{sign} {self.threshold:g}{self.unit}", "PASS" if self.passed else "MISS",
                self.note]


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def numeric(text):
        return text[:1].isdigit() or text[:1] in "-+." and text[1:2].isdigit()

    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if k and numeric(c) else c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


TARGET_HEADER = ["target", "measured", "wanted", "result", "note"]


@dataclass
class Report:
    """A benchmark's figures: tables, targets and notes, printed as text and written as Markdown."""
    title: str
    args: argparse.Namespace
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_before: str = field(default_factory=load_average)
    cpu: CpuShare = field(default_factory=CpuShare)
    measured: str = ""  # the conditions, set by finish()

    def table(self, caption: str, header: list[str], rows: list[list[str]]):
        self.tables.append(Table(caption, header, rows))

    def target(self, *args, **kwargs) -> Target:
        t = Target(*args, **kwargs)
        self.targets.append(t)
        return t

    def note(self, text: str):
        self.notes.append(text)

    @property
    def command(self) -> str:
        """The command that reproduces these figures (the output flags left out)."""
        argv, skip = [], False
        for arg in sys.argv[1:]:
            if skip:
                skip = False
                continue
            if arg in ("--markdown", "--json"):
                skip = True
                continue
            if arg.startswith(("--markdown=", "--json=")):
                continue
            argv.append(arg)
        script = os.path.relpath(Path(sys.argv[0]).resolve(), REPO)
        return " ".join(shlex.quote(a) for a in ["python", script, *argv])

    def conditions(self) -> str:
        """The load on the machine while it was measured."""
        other = self.cpu.other()
        text = f"load average before {self.load_before}; other processes used " + \
            ("n/a" if other is None else f"{100 * other:.0f}%") + " of the CPU during the measurement"
        if other is not None and other > 0.05:
            text += " (figures unreliable: PyTorch's threads wait for each other on a shared CPU)"
        return text

    def text(self) -> str:
        out = [f"== {self.title} ==", f"command: {self.command}", f"machine: {machine_line()}",
               f"conditions: {self.measured}", ""]
        for t in self.tables:
            out += [t.caption, format_table(t.header, t.rows), ""]
        if self.targets:
            out += ["targets", format_table(TARGET_HEADER, [t.cells() for t in self.targets]), ""]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def markdown(self) -> str:
        from runs import markdown_table  # here, not at the top: run_all.py --help need not import torch
        out = [f"## {self.title}", "", f"`{self.command}`", "",
               f"Measured {time.strftime('%Y-%m-%d %H:%M')}; {self.measured}.", ""]
        for t in self.tables:
            out += [f"{t.caption}:", "", markdown_table(t.header, t.rows), ""]
        if self.targets:
            out += ["Targets:", "", markdown_table(TARGET_HEADER, [t.cells() for t in self.targets]), ""]
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n\n"

    def finish(self):
        """Print the report; append it to --markdown and write its targets to --json when asked."""
        self.measured = self.conditions()
        print("\n" + self.text(), flush=True)
        if self.args.markdown:
            with open(self.args.markdown, "a", encoding="utf-8") as f:
                f.write(self.markdown())
            print(f"appended to {self.args.markdown}")
        if self.args.json:
            Path(self.args.json).write_text(json.dumps({
                "title": self.title, "command": self.command,
                "targets": [{**t.__dict__, "passed": t.passed} for t in self.targets]}, indent=2))


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"
