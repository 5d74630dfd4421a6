"""Benchmark 6, `--compile`: for each architecture, training images/s of our loop in the mode
`--precision auto` chooses, eager and compiled with torch.compile, and how long the compilation takes. On a
GPU (`--device cuda`) the compiled session replays its steps as CUDA graphs, as train_<arch>.py --compile does.

    python bench/compile_step.py                        # all five architectures (compiling alone takes
                                                        # minutes for some: BENCHMARKS.md)
    python bench/compile_step.py --archs cnn,resnet --repeats 5
    python bench/compile_step.py --device cuda --archs cnn,resnet,rexnet

Both sessions are built as train_<arch>.py builds them (session.prepare_session, the script's defaults, all
the demo's images) and run the first steps of epochs of trainer.train_one_epoch, taking turns so that other
load on the machine hits both alike. The compiled session's first step, which is where torch.compile
(inductor) compiles the forward and backward passes, is timed apart; it depends on torch's compile cache
(/tmp/torchinductor_$USER): a cold cache takes longer, one that already holds the graphs less.
"""
from __future__ import annotations

import tempfile
import time

import common  # puts the repository root on sys.path

import torch

from train_step import Ours, session


def bench_arch(arch: str, args, runs_dir: str) -> dict:
    eager, _ = session(arch, args.data, runs_dir, "auto", "auto", device=args.device)
    mode = eager.spec.compute
    print(f"\n[{arch}] {mode} on {eager.rt.device}", flush=True)
    compiled, _ = session(arch, args.data, runs_dir, mode.precision, "on" if mode.channels_last else "off",
                          compile=True, device=args.device)
    runners = {"eager": Ours(eager), "compiled": Ours(compiled)}
    start = time.perf_counter()
    runners["compiled"].run(1)
    first_step = time.perf_counter() - start
    runners["eager"].run(1)
    rates = {name: [] for name in runners}
    for r in range(args.repeats):
        for name in (["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]):
            rates[name].append(runners[name].run(args.steps))
        print(f"  repeat {r + 1}: eager {rates['eager'][-1]:,.0f}, compiled {rates['compiled'][-1]:,.0f}", flush=True)
    return {"arch": arch, "mode": str(mode), "rates": rates, "first_step": first_step,
            "median": {name: common.median(v) for name, v in rates.items()}}


def main(argv=None):
    parser = common.build_parser(__doc__)
    parser.add_argument("--archs", default=None, help="comma-separated architectures (default: all; quick: cnn,resnet)")
    parser.add_argument("--repeats", type=int, default=None, help="measurements of each (default 5, quick 3)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per measurement (default 10, quick 4)")
    parser.add_argument("--device", default="cpu", help="cpu (default), or cuda: there --compile replays CUDA graphs")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.steps = args.steps or (4 if args.quick else 10)
    args.data = str(common.demo_dir(args.data))
    archs = common.archs(parser, args.archs, "cnn,resnet" if args.quick else None)

    report = common.Report("6. Compiling (--compile)", args)
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as runs_dir:
        results = [bench_arch(arch, args, runs_dir) for arch in archs]
    report.table(
        f"Training images/s in the mode --precision auto chose, eager and with --compile, measured in turns "
        f"(median of {args.repeats} measurements of {args.steps} steps; min-max; torch threads {torch.get_num_threads()})",
        ["arch", "mode", "eager", "compiled", "compiled / eager", "first compiled step s"],
        [[r["arch"], r["mode"], common.with_spread(r["rates"]["eager"]), common.with_spread(r["rates"]["compiled"]),
          common.ratio(r["median"]["compiled"], r["median"]["eager"]), f"{r['first_step']:.0f}"] for r in results])
    report.note(f"device: {args.device}" + (" (compiled: CUDA graphs, torch.compile's reduce-overhead)"
                                           if args.device.startswith("cuda") else ""))
    report.note("first compiled step: torch.compile compiling the forward and backward passes, plus the step itself; "
                "it depends on the state of torch's compile cache (/tmp/torchinductor_$USER) when the run started.")
    report.finish()
    return report


if __name__ == "__main__":
    main()
