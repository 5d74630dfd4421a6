"""Benchmark 2, the training step: for each architecture at its train script's image and batch size,
training images/s of our loop in every fixed precision mode and with `--precision auto`, against a plain
fp32, channels-first PyTorch loop over the same model.

    python bench/train_step.py                           # all five architectures
    python bench/train_step.py --quick                   # cnn, alexnet and coatnet; fewer steps and repeats
    python bench/train_step.py --archs cnn,resnet --repeats 5 --markdown BENCHMARKS.md

Ours is the real thing: session.prepare_session builds the session exactly as train_<arch>.py does
(config.make_config over the script's DEFAULTS, with --precision and --channels-last fixed to each
format of compute.candidate_formats("auto", "auto")), and trainer.train_one_epoch(..., stop_step=N) runs
the first N steps of an epoch of real demo images, so its figure includes everything the loop does per
step (data.batches, data.Preprocess with its augmentation, the learning-rate schedule, metrics). The
plain loop gets ready-made normalised float batches and does only forward, loss, backward and AdamW: that
favours it. `auto` is prepare_session with --precision auto, i.e. compute.choose_format's own
measurement; its figure is the measured figure of the mode it chose. Modes are measured in turns, repeat
after repeat, so that other load on the machine hits all alike.
"""
from __future__ import annotations

import importlib
import tempfile
import time
from collections import Counter

import common  # puts the repository root on sys.path

import numpy as np
import torch
import torch.nn.functional as F

import data
import trainer
from session import Session, prepare_session
from compute import candidate_formats
from config import built_in_defaults, make_config
from models import build_model
from runtime import setup_runtime

PLAIN = "plain fp32"


def script_defaults(arch: str) -> dict:
    """Every option of train_<arch>.py at its default: the built-in ones under the script's own (image size,
    learning rate, ...)."""
    return {**built_in_defaults(), **importlib.import_module(f"train_{arch}").DEFAULTS}


def session(arch: str, data_dir: str, runs_dir: str, precision: str, channels_last: str,
            compile: bool = False, device: str = "cpu") -> tuple[Session, float]:
    """A training session as train_<arch>.py sets it up on `device`, on all the demo's images (compiled with
    `compile`); and the seconds that setting up took (for auto, mostly its measurement of the modes)."""
    config = make_config(arch, script_defaults(arch), data=data_dir, val_split=0.0, precision=precision,
                         channels_last=channels_last, progress=False, runs_dir=runs_dir, compile=compile,
                         device=device, name=f"{arch}-{precision}-{channels_last}{'-compiled' if compile else ''}")
    start = time.perf_counter()
    s, _, _ = prepare_session(config, setup_runtime(device))
    return s, time.perf_counter() - start


class Ours:
    """The first steps of successive epochs of trainer.train_one_epoch on a session."""

    def __init__(self, s: Session):
        self.s, self.epoch = s, 0
        self.stop = trainer.StopRequest()  # never entered: no signal handlers, never requested

    def run(self, steps: int) -> float:
        """Training images/s over the first `steps` steps of the next epoch."""
        self.epoch += 1
        result = trainer.train_one_epoch(self.s, self.epoch, self.stop, stop_step=steps)
        return result.seen / result.seconds


class Plain:
    """The loop a user writes first: fp32, channels-first, ready-made batches, AdamW, cross-entropy."""

    def __init__(self, arch: str, s: Session, n_batches: int = 4):
        torch.manual_seed(0)
        cfg, spec = s.config, s.spec
        self.model = build_model(arch, len(spec.class_names), spec.channels, cfg.img_size).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        to_input = data.Preprocess(spec.mean, spec.std)  # normalised floats, channels-first, no augmentation
        bs = cfg.batch_size
        self.batches = []
        for i in range(n_batches):
            idx = np.arange(i * bs, (i + 1) * bs)
            x = to_input(torch.from_numpy(np.ascontiguousarray(s.data.pixels[idx])))
            self.batches.append((x, torch.from_numpy(s.data.labels[idx])))

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for i in range(steps):
            x, y = self.batches[i % len(self.batches)]
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return steps * len(self.batches[0][1]) / (time.perf_counter() - start)


def bench_arch(arch: str, args, runs_dir: str) -> dict:
    defaults = script_defaults(arch)
    print(f"\n[{arch}] img_size {defaults['img_size']}, batch {defaults['batch_size']}", flush=True)
    fixed = candidate_formats("auto", "auto", torch.device("cpu"))
    runners = {}
    for compute in fixed:
        s, _ = session(arch, args.data, runs_dir, compute.precision, "on" if compute.channels_last else "off")
        assert s.spec.compute == compute, (s.spec.compute, compute)
        runners[str(compute)] = Ours(s)
    runners[PLAIN] = Plain(arch, next(iter(runners.values())).s)

    steps = {}
    for name, runner in runners.items():  # warm-up (kernels, allocator), and how many steps fill the budget
        runner.run(1)
        rate = runner.run(args.min_steps)
        steps[name] = int(np.clip(round(args.seconds * rate / defaults["batch_size"]), args.min_steps, args.max_steps))
    rates = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(runners[name].run(steps[name]))
        print(f"  repeat {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.0f}" for n in names), flush=True)
    del runners

    choices, choose_seconds = [], []
    for _ in range(args.choices):
        s, seconds = session(arch, args.data, runs_dir, "auto", "auto")
        choices.append(str(s.spec.compute))
        choose_seconds.append(seconds)
        del s
    print(f"  auto chose {', '.join(choices)}", flush=True)
    median = {name: common.median(v) for name, v in rates.items()}
    fastest = max((str(m) for m in fixed), key=median.get)
    auto = float(np.mean([median[c] for c in choices]))
    return {"arch": arch, "defaults": defaults, "modes": [str(m) for m in fixed], "rates": rates, "median": median,
            "steps": steps, "choices": choices, "choose_seconds": choose_seconds, "fastest": fastest, "auto": auto}


def _tally(choices: list[str]) -> str:
    """"bf16+channels_last" when every choice agreed, else "bf16+channels_last 2/3, fp32 1/3"."""
    counts = Counter(choices)
    if len(counts) == 1:
        return choices[0] + (f" ({len(choices)}/{len(choices)})" if len(choices) > 1 else "")
    return ", ".join(f"{mode} {n}/{len(choices)}" for mode, n in counts.most_common())


def main(argv=None):
    parser = common.build_parser(__doc__)
    parser.add_argument("--archs", default=None,
                        help="comma-separated architectures (default: all; quick: cnn,alexnet,coatnet, the fastest)")
    parser.add_argument("--repeats", type=int, default=None, help="measurements per mode (default 5, quick 2)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="about how long one measurement runs (default 8, quick 2); sets its steps")
    parser.add_argument("--min-steps", type=int, default=None, help="default 3, quick 2")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--choices", type=int, default=None,
                        help="how many times to let --precision auto choose (default 3, quick 1)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.seconds = args.seconds or (2.0 if args.quick else 8.0)
    args.min_steps = args.min_steps or (2 if args.quick else 3)
    args.choices = args.choices or (1 if args.quick else 3)
    args.data = str(common.demo_dir(args.data))
    archs = common.archs(parser, args.archs, "cnn,alexnet,coatnet" if args.quick else None)

    report = common.Report("2. Training step", args)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-step-") as runs_dir:
        for arch in archs:
            results.append(bench_arch(arch, args, runs_dir))

    modes = results[0]["modes"]
    rows = []
    for res in results:
        med, d = res["median"], res["defaults"]
        rows.append([res["arch"], f"{d['img_size']}px / {d['batch_size']}", common.fmt(med[PLAIN]),
                     *[common.fmt(med[m]) + (" *" if m == res["fastest"] else "") for m in modes],
                     _tally(res["choices"]),
                     common.fmt(res["auto"]), f"{100 * (res['auto'] / med[res['fastest']] - 1):+.1f}%",
                     common.ratio(res["auto"], med[PLAIN]), f"{common.median(res['choose_seconds']):.1f}"])
    report.table(
        f"Training images/s (median of {args.repeats} measurements; * the fastest fixed mode; torch threads "
        f"{torch.get_num_threads()})",
        ["arch", "size / batch", PLAIN + " loop", *[f"ours {m}" for m in modes], "auto chose", "auto",
         "auto vs fastest", "auto vs plain", "auto setup s"], rows)
    report.table("Spread of the measurements (min-max images/s)",
                 ["arch", PLAIN, *modes],
                 [[r["arch"], common.spread(r["rates"][PLAIN]), *[common.spread(r["rates"][m]) for m in modes]]
                  for r in results])
    for res in results:
        med = res["median"]
        report.target(f"{res['arch']}: auto vs fastest fixed mode ({res['fastest']})",
                      100 * (res["auto"] / med[res["fastest"]] - 1), -5, unit="%")
    cnn = next((r for r in results if r["arch"] == "cnn"), None)
    if cnn:
        report.target("cnn: auto / plain fp32 loop", cnn["auto"] / cnn["median"][PLAIN], 2)
    report.note("auto setup s: seconds prepare_session took with --precision auto (loading the cached images, "
                "building the model, and timing 2 warm-up and 5-15 steps in each mode, up to a minute); a run pays it "
                "once at its start.")
    report.note("each measurement runs a number of steps chosen to last about "
                f"{args.seconds:g} s (at least {args.min_steps}); steps per mode: "
                + "; ".join(f"{r['arch']} " + ", ".join(f"{k} {v}" for k, v in r["steps"].items()) for r in results))
    report.finish()
    return report


if __name__ == "__main__":
    main()
