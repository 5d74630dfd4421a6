"""Run every benchmark, one after another, each in its own process, and write BENCHMARKS.md: the machine,
a summary of the targets, then each benchmark's section with the command that reproduces it.

    python bench/run_all.py                              # the full figures (about an hour on 2 cores)
    python bench/run_all.py --quick --out /tmp/BENCHMARKS-quick.md    # a few minutes each
    python bench/run_all.py --only input_pipeline,memory
    python bench/run_all.py --quick --full time_to_accuracy   # quick, but the accuracy target on all the data

Run it on a quiet machine: every benchmark notes how much CPU other processes used while it ran, and anything else
running on the CPU slows PyTorch's threads far more than its share.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import common

BENCHMARKS = ["input_pipeline", "train_step", "time_to_accuracy", "predict_speed", "memory"]


def main(argv=None):
    parser = common.build_parser(__doc__, outputs=False)
    parser.add_argument("--out", default=str(common.REPO / "BENCHMARKS.md"), help="the Markdown file to write")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmarks to run")
    parser.add_argument("--full", default="", help="with --quick: comma-separated benchmarks to run in full anyway")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    full = [b.strip() for b in args.full.split(",") if b.strip()]
    unknown = sorted(set(chosen + full) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    common.demo_dir(args.data)

    started = time.time()
    sections, summary = [], []
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        for name in chosen:
            md, js = Path(tmp) / f"{name}.md", Path(tmp) / f"{name}.json"
            cmd = [f"bench/{name}.py", "--data", args.data, "--markdown", md, "--json", js]
            if args.quick and name not in full:
                cmd.append("--quick")
            finished = common.run_python(cmd, echo=True, on_line=lambda line: print("   ", line.rstrip(), flush=True))
            if finished.returncode != 0:
                sections.append(f"## bench/{name}.py failed\n\nexit status {finished.returncode}:\n\n```\n"
                                f"{finished.output[-2000:]}\n```\n\n")
                continue
            sections.append(md.read_text())
            result = json.loads(js.read_text())
            summary += [[result["title"], *common.Target(**{k: v for k, v in t.items() if k != "passed"}).cells()]
                        for t in result["targets"]]

    m = common.machine()
    lines = [
        "# Benchmarks",
        "",
        "This toolkit against the tools a user would pick instead (timm's `train.py`, torchvision's reference "
        "scripts: per-sample PIL decoding in DataLoader workers, fp32), measured side by side in one run on the "
        "real Fashion-MNIST demo competition (`python data.py fashion-mnist data/fashion-mnist`).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['features']}), {m['memory']} memory, GPU: {m['gpu']}",
        f"- Software: Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, OpenCV {m['opencv']}",
        f"- Date: {time.strftime('%Y-%m-%d', time.localtime(started))}, {(time.time() - started) / 60:.0f} minutes "
        f"in all{' (--quick: fewer images, steps and repeats' + (', except ' + ', '.join(full) if full else '') + ')' if args.quick else ''}",
        f"- Reproduce everything: `python bench/run_all.py{' --quick' if args.quick else ''}"
        f"{' --full ' + ','.join(full) if args.quick and full else ''}`; each section gives "
        "its own command. Ratios are what count; times vary with the machine and anything else running on it.",
        "",
        "## Targets",
        "",
        common.markdown_table(["benchmark", *common.TARGET_HEADER], summary),
        "",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n" + "".join(sections).rstrip() + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
