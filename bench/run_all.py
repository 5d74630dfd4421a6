"""Run the benchmarks, one after another, each in its own process, and write BENCHMARKS.md: the machine,
a summary of the targets, then each benchmark's section with the command that reproduces it and when it
was measured.

    python bench/run_all.py                              # the full figures (long: BENCHMARKS.md says how long)
    python bench/run_all.py --quick --out /tmp/BENCHMARKS-quick.md    # a few minutes each
    python bench/run_all.py --only train_step            # measure one again; the other sections are kept
    python bench/run_all.py --quick --full time_to_accuracy   # quick, but the accuracy target on all the data

Each benchmark's section and targets are kept in bench/results/<name>.md and .json (next to --out), so
measuring one benchmark again rewrites only its section; `--only ''` only assembles them. The last section,
bench/results/gpu.md, comes from a GPU machine (bench/gpu_check.sh) and is kept as it is. Run it on a quiet machine: every benchmark notes
how much CPU other processes used while it ran, and anything else running on the CPU slows PyTorch's
threads far more than its share.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import common

BENCHMARKS = ["input_pipeline", "train_step", "time_to_accuracy", "predict_speed", "memory", "compile_step",
              "cache_check", "large_images", "recipes"]


def results_dir(out: Path) -> Path:
    """Where the sections behind `out` are kept: bench/results for the repository's BENCHMARKS.md."""
    return common.REPO / "bench" / "results" if out.resolve() == (common.REPO / "BENCHMARKS.md").resolve() \
        else out.with_name(out.stem + "-results")


def run_benchmark(name: str, args, quick: bool, results: Path) -> bool:
    """Run bench/<name>.py; on success its section and targets replace the kept ones."""
    results.mkdir(parents=True, exist_ok=True)
    md, js = results / f"{name}.md.partial", results / f"{name}.json.partial"
    md.unlink(missing_ok=True)
    cmd = [f"bench/{name}.py", "--data", args.data, "--markdown", md, "--json", js]
    if quick:
        cmd.append("--quick")
    finished = common.run_python(cmd, echo=True, on_line=lambda line: print("   ", line.rstrip(), flush=True))
    if finished.returncode != 0 or not js.is_file():
        print(f"bench/{name}.py failed (exit status {finished.returncode}); its kept section is unchanged")
        return False
    os.replace(md, results / f"{name}.md")
    os.replace(js, results / f"{name}.json")
    return True


def assemble(out: Path, results: Path, measured: bool = True):
    """BENCHMARKS.md from the kept sections, in the issue's order. When nothing was `measured` in this run,
    the machine and software lines of the existing file stay: its sections were measured there."""
    from runs import markdown_table  # here, not at the top: run_all.py --help need not import torch
    sections, summary = [], []
    for name in BENCHMARKS:
        md, js = results / f"{name}.md", results / f"{name}.json"
        if not (md.is_file() and js.is_file()):
            continue
        sections.append(md.read_text())
        result = json.loads(js.read_text())
        summary += [[result["title"], *common.Target(**{k: v for k, v in t.items() if k != "passed"}).cells()]
                    for t in result["targets"]]
    if (results / "gpu.md").is_file():  # measured on a GPU machine by bench/gpu_check.sh, not by this script
        sections.append((results / "gpu.md").read_text())
    m = common.machine()
    machine = f"- Machine: {m['cpu']}, {m['cores']} cores ({m['features']}), {m['memory']} memory, GPU: {m['gpu']}"
    software = f"- Software: Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, OpenCV {m['opencv']}"
    if not measured and out.is_file():
        before = out.read_text(encoding="utf-8").splitlines()
        machine = next((line for line in before if line.startswith("- Machine:")), machine)
        software = next((line for line in before if line.startswith("- Software:")), software)
    lines = [
        "# Benchmarks",
        "",
        "This toolkit against the tools a user would pick instead (timm's `train.py`, torchvision's reference "
        "scripts: per-sample PIL decoding in DataLoader workers, fp32), measured side by side in one run on the "
        "real Fashion-MNIST demo competition (`python data.py fashion-mnist data/fashion-mnist`).",
        "",
        machine,
        software,
        "- Reproduce everything: `python bench/run_all.py` (about an hour and a half); `--only NAME` measures one benchmark "
        "again and keeps the other sections. Each section gives its own command, date and the load on the machine "
        "while it ran. Ratios are what count; times vary with the machine and anything else running on it.",
        "",
        "## Targets",
        "",
        markdown_table(["benchmark", *common.TARGET_HEADER], summary),
        "",
    ]
    out.write_text("\n".join(lines) + "\n" + "".join(sections).rstrip() + "\n", encoding="utf-8")


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
    out = Path(args.out)
    results = results_dir(out)
    started = time.time()
    failed = [name for name in chosen if not run_benchmark(name, args, args.quick and name not in full, results)]
    assemble(out, results, measured=bool(chosen))
    print(f"\nwrote {out} ({(time.time() - started) / 60:.0f} minutes)" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
