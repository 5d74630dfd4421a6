#!/usr/bin/env bash
# The one GPU check: every architecture for a few epochs (start-up time and images/s), the CNN's default recipe
# to accuracy, the test suite with CUDA present, torchrun, then cuDNN autotuning and CUDA graphs (--compile)
# measured against the defaults; it ends in a report. Meant for one NVIDIA GPU (an H200 is lent to this project
# now and then); the first four stages take under 8 minutes there.
#
#   mkdir -p .gpu-data && cp /usr/share/datasets/fashion-mnist/*.gz .gpu-data/    # here, before: the demo's files
#   bash bench/gpu_check.sh OUTDIR [STAGES]                                      # there (device tool: carry .gpu-data)
#
# STAGES: a comma-separated choice of archs,cnn-full,tests,torchrun,autotune,graphs,profile (default: all of
# them, in that order). OUTDIR gets report.md (the figures) and logs.tgz (every log, metrics.csv and run.json),
# packed after every stage so that a run cut short still leaves them. Each step has its own time limit.
# GPU_CHECK_LIMIT=N keeps only N images of each split: a dry run of the script itself, e.g. on a CPU.
set -u
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
OUT=${1:-gpu-check}; STAGES=",${2:-archs,cnn-full,tests,torchrun,autotune,graphs,profile},"; mkdir -p "$OUT"
L=$(mktemp -d); T0=$(date +%s); RUNS=runs-gpu-check
rm -rf "$RUNS"
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*" | tee -a "$L/stages.txt"; }
want() { [[ $STAGES == *",$1,"* ]]; }
pack() {
  for r in "$RUNS"/*/; do [ -d "$r" ] && for f in metrics.csv run.json config.json; do cp "$r/$f" "$L/$(basename "$r").$f" 2>/dev/null; done; done
  tar czf "$OUT/logs.tgz" -C "$L" .
}
# train NAME SCRIPT LIMIT_S [FLAGS...]: one training run, its log in NAME.log and its wall time in stages.txt
train() {
  local name=$1 script=$2 limit=$3; shift 3
  el "$script $* ($name)"
  local start; start=$(date +%s.%N)
  timeout "$limit" python3 "$script" --data data/fm --name "$name" --runs-dir "$RUNS" --no-progress "$@" > "$L/$name.log" 2>&1
  echo "$name rc=$? wall=$(python3 -c "import time; print(round(time.time() - $start, 1))")" | tee -a "$L/stages.txt"
  tail -3 "$L/$name.log"; pack
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'timm', timm.__version__)"; } > "$L/machine.txt" 2>&1
cat "$L/machine.txt"

el "data"
timeout 120 python3 data.py fashion-mnist data/fm --source .gpu-data ${GPU_CHECK_LIMIT:+--limit "$GPU_CHECK_LIMIT"} > "$L/data.log" 2>&1 || { echo "no demo data (.gpu-data)"; pack; exit 1; }

if want archs; then
  # Every architecture, two epochs of its own recipe; then the CNN once more: its second start shows the
  # remembered compute format (no measuring) and the cached images.
  for arch in cnn alexnet resnet rexnet coatnet; do train "$arch" "train_$arch.py" 150 --epochs 2; done
  train cnn-again train_cnn.py 60 --epochs 1
fi
if want cnn-full; then
  train cnn-full train_cnn.py 150
  el "predict.py --solution --tta"
  timeout 60 python3 predict.py "$RUNS/cnn-full" --data data/fm --out "$L/submission.csv" --solution data/fm/solution.csv --tta > "$L/predict.log" 2>&1
  echo "predict rc=$?" | tee -a "$L/stages.txt"; tail -2 "$L/predict.log"; pack
fi
if want tests; then
  el "pytest -n 8 tests"
  timeout 240 python3 -m pytest -q -n 8 tests -p no:cacheprovider -rs > "$L/pytest.log" 2>&1
  echo "pytest rc=$?" | tee -a "$L/stages.txt"; tail -8 "$L/pytest.log"; pack
fi
if want torchrun; then
  el "torchrun --nproc_per_node 1"
  timeout 90 torchrun --standalone --nproc_per_node 1 train_cnn.py --data data/fm --epochs 1 --name ddp --runs-dir "$RUNS" --no-progress > "$L/ddp.log" 2>&1
  echo "torchrun rc=$?" | tee -a "$L/stages.txt"; pack
fi
if want autotune; then
  # cuDNN autotuning (off by default): the same two epochs as the archs stage, with it on.
  for arch in cnn resnet rexnet coatnet; do train "$arch-autotune" "train_$arch.py" 150 --epochs 2 --cudnn-benchmark; done
fi
if want graphs; then
  # CUDA graphs (--compile on one GPU) against eager steps, in turns; then a whole compiled CNN run.
  el "bench/compile_step.py --device cuda"
  timeout 300 python3 bench/compile_step.py --device cuda --archs cnn,resnet --repeats 3 --steps 50 > "$L/compile_step.log" 2>&1
  echo "compile_step rc=$?" | tee -a "$L/stages.txt"; tail -12 "$L/compile_step.log"; pack
  train cnn-compiled train_cnn.py 150 --compile
fi
if want profile; then
  for arch in rexnet coatnet; do
    el "bench/profile_step.py --device cuda --arch $arch"
    timeout 120 python3 bench/profile_step.py --device cuda --arch "$arch" --steps 20 --rows 25 > "$L/profile-$arch.log" 2>&1
    echo "profile-$arch rc=$?" | tee -a "$L/stages.txt"; head -3 "$L/profile-$arch.log"; pack
  done
fi

el "report"
python3 - "$RUNS" "$L" > "$OUT/report.md" <<'PY'
import json, re, sys
from pathlib import Path
sys.path.insert(0, ".")
import runs
runs_dir, logs = Path(sys.argv[1]), Path(sys.argv[2])
print("# GPU check\n\n```\n" + (logs / "machine.txt").read_text() + "```\n")
if runs_dir.is_dir():
    print(runs.runs_table(runs_dir))
print("| run | compute format chosen | how | ready after s | wall s | training s | wall - training s | images/s |\n"
      "|---|---|---|---|---|---|---|---|")
walls = dict(re.findall(r"^(\w[\w-]*) rc=\d+ wall=([\d.]+)", (logs / "stages.txt").read_text(), re.M))
for info_path in sorted(runs_dir.glob("*/run.json")):
    info = runs.read_run_info(info_path.parent) or {}
    wall = float(walls.get(info_path.parent.name, "nan"))
    train = float(info.get("train_time") or 0)
    rate = f"{info['images_per_s']:.0f}" if info.get("images_per_s") else ""
    print(f"| {info_path.parent.name} | {info.get('mode', '')} | {(info.get('mode_choice') or {}).get('how', '')} "
          f"| {info.get('startup_s', '')} | {wall:.1f} | {train:.1f} | {wall - train:.1f} | {rate} |")
print("\nready after: seconds from the process's start (imports, data, model, compute format) to its first "
      "training step; wall - training also holds evaluation, checkpoints and plots.")
print("\n```\n" + (logs / "stages.txt").read_text() + "```")
for name in ("predict.log", "pytest.log", "compile_step.log", "profile-rexnet.log", "profile-coatnet.log"):
    if (logs / name).is_file():
        print(f"\n{name} (end):\n```\n" + "".join((logs / name).read_text().splitlines(True)[-14:]) + "```")
PY
cat "$OUT/report.md"; pack; el "done"
