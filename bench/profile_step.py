"""Where the time of a training step goes: torch.profiler over a few steps of trainer.train_one_epoch for
one architecture in one precision mode, as benchmark 2 runs it. A tool for when a target is missed, not
a benchmark with targets.

    python bench/profile_step.py --arch cnn                      # the mode --precision auto picks
    python bench/profile_step.py --arch resnet --mode bf16+channels_last --steps 10 --rows 30
    python bench/profile_step.py --arch cnn --trace /tmp/cnn-trace.json    # open in chrome://tracing or Perfetto
    python bench/profile_step.py --arch rexnet --device cuda     # GPU: kernels by GPU time, and the host's share
"""
from __future__ import annotations

import tempfile

import common  # puts the repository root on sys.path

import torch
from torch.profiler import ProfilerActivity, profile

import train_step

GROUPS = {  # what part of the step an operator belongs to, by name prefix (self time)
    "convolution, forward and backward": ("aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
                                          "aten::convolution_backward", "aten::_slow_conv2d", "aten::thnn_conv"),
    "matrix products (linear layers, attention)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                                                   "aten::_scaled_dot_product"),
    "batch norm, forward and backward": ("aten::native_batch_norm", "aten::_batch_norm", "aten::batch_norm"),
    "dropout (random masks)": ("aten::bernoulli", "aten::native_dropout", "aten::dropout"),
    "pooling": ("aten::max_pool2d", "aten::adaptive_avg_pool2d", "aten::_adaptive_avg_pool2d", "aten::avg_pool2d"),
    "input: augmentation, normalisation": ("aten::grid_sampler", "aten::affine_grid", "aten::flip", "aten::where"),
}


def main(argv=None):
    parser = common.build_parser(__doc__, outputs=False)
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--mode", default="auto", help="fp32, fp32+channels_last, bf16, bf16+channels_last or auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    parser.add_argument("--trace", default=None, help="also write a Chrome trace here")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    data_dir = str(common.demo_dir(args.data))
    precision, _, cl = args.mode.partition("+")
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as runs_dir:
        s, setup = train_step.session(args.arch, data_dir, runs_dir, precision,
                                      "auto" if precision == "auto" else ("on" if cl else "off"), device=args.device)
        ours = train_step.Ours(s)
        warm = ours.run(2)  # warm-up: kernels chosen, memory allocated
        plain = ours.run(args.steps)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                     record_shapes=False) as prof:
            rate = ours.run(args.steps)
    print(f"{args.arch} in {s.spec.compute} on {s.rt.device}: setting up {setup:.1f} s, first 2 steps "
          f"{2 * s.config.batch_size / warm:.2f} s, then {plain:,.0f} images/s over {args.steps} steps of batch "
          f"{s.config.batch_size} ({rate:,.0f} with the profiler on; torch threads {torch.get_num_threads()})\n")
    events = prof.key_averages()
    if cuda:  # where the GPU's time goes; the CPU table below says what the host spends launching it
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows))
        gpu = sum(e.self_device_time_total for e in events)
        print(f"GPU busy {gpu / 1e3:.1f} ms of {args.steps * s.config.batch_size / rate * 1e3:.1f} ms "
              f"({100 * gpu / 1e6 / (args.steps * s.config.batch_size / rate):.0f}%)\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    # The optimiser's work is many small per-parameter operators: counted by its step's total instead.
    shares = {"optimizer step (all of it)": sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))}
    for group, prefixes in GROUPS.items():
        shares[group] = sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes))
    shares["everything else"] = total - sum(shares.values())
    print("share of the step's CPU time:")
    for group, part in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {100 * part / total:5.1f}%  {group}")
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"wrote {args.trace}")


if __name__ == "__main__":
    main()
