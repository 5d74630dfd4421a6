#!/usr/bin/env bash
# The one GPU check: the test suite with CUDA present, every architecture for a few epochs (start-up time and
# images/s), the CNN's default recipe to accuracy, and torchrun; it ends in a report. Meant for one NVIDIA GPU
# (an H200 is lent to this project now and then) and to finish in under 8 minutes there.
#
#   mkdir -p .gpu-data && cp /usr/share/datasets/fashion-mnist/*.gz .gpu-data/    # here, before: the demo's files
#   bash bench/gpu_check.sh OUTDIR                                               # there (device tool: carry .gpu-data)
#
# OUTDIR gets report.md (the figures) and logs.tgz (every log, metrics.csv and run.json), packed after every stage
# so that a run cut short still leaves them. Each stage has its own time limit.
set -u
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
OUT=${1:-gpu-check}; mkdir -p "$OUT"
L=$(mktemp -d); T0=$(date +%s); RUNS=runs-gpu-check
rm -rf "$RUNS"
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*" | tee -a "$L/stages.txt"; }
pack() {
  for r in "$RUNS"/*/; do [ -d "$r" ] && for f in metrics.csv run.json config.json; do cp "$r/$f" "$L/$(basename "$r").$f" 2>/dev/null; done; done
  tar czf "$OUT/logs.tgz" -C "$L" .
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"; } > "$L/machine.txt" 2>&1
cat "$L/machine.txt"

el "data"
timeout 120 python3 data.py fashion-mnist data/fm --source .gpu-data > "$L/data.log" 2>&1 || { echo "no demo data (.gpu-data)"; pack; exit 1; }

# Every architecture, two epochs of its own recipe; then the CNN once more: its second start shows the remembered
# compute format (no measuring) and the cached images.
for arch in cnn alexnet resnet rexnet coatnet; do
  el "train_$arch.py --epochs 2"
  start=$(date +%s.%N)
  timeout 150 python3 "train_$arch.py" --data data/fm --epochs 2 --name "$arch" --runs-dir "$RUNS" --no-progress > "$L/$arch.log" 2>&1
  echo "$arch rc=$? wall=$(python3 -c "import time; print(round(time.time() - $start, 1))")" | tee -a "$L/stages.txt"
  tail -3 "$L/$arch.log"; pack
done
el "train_cnn.py again (remembered format)"
timeout 60 python3 train_cnn.py --data data/fm --epochs 1 --name cnn-again --runs-dir "$RUNS" --no-progress > "$L/cnn-again.log" 2>&1
echo "cnn-again rc=$?" | tee -a "$L/stages.txt"

el "train_cnn.py, default recipe (20 epochs), then predict.py --solution"
timeout 150 python3 train_cnn.py --data data/fm --name cnn-full --runs-dir "$RUNS" --no-progress > "$L/cnn-full.log" 2>&1
echo "cnn-full rc=$?" | tee -a "$L/stages.txt"
timeout 60 python3 predict.py "$RUNS/cnn-full" --data data/fm --out "$L/submission.csv" --solution data/fm/solution.csv --tta > "$L/predict.log" 2>&1
echo "predict rc=$?" | tee -a "$L/stages.txt"; tail -2 "$L/predict.log"; pack

el "torchrun --nproc_per_node 1"
timeout 90 torchrun --standalone --nproc_per_node 1 train_cnn.py --data data/fm --epochs 1 --name ddp --runs-dir "$RUNS" --no-progress > "$L/ddp.log" 2>&1
echo "torchrun rc=$?" | tee -a "$L/stages.txt"; pack

el "pytest -n 8 tests"
timeout 240 python3 -m pytest -q -n 8 tests -p no:cacheprovider -rs > "$L/pytest.log" 2>&1
echo "pytest rc=$?" | tee -a "$L/stages.txt"; tail -8 "$L/pytest.log"; pack

el "report"
python3 - "$RUNS" "$L" > "$OUT/report.md" <<'EOF'
import json, re, sys
from pathlib import Path
sys.path.insert(0, ".")
import runs
runs_dir, logs = Path(sys.argv[1]), Path(sys.argv[2])
print("# GPU check\n\n```\n" + (logs / "machine.txt").read_text() + "```\n")
print(runs.runs_table(runs_dir))
print("| run | compute format chosen | how | wall s | training s | start-up s (wall - training) |\n|---|---|---|---|---|---|")
walls = dict(re.findall(r"^(\w[\w-]*) rc=\d+ wall=([\d.]+)", (logs / "stages.txt").read_text(), re.M))
for info_path in sorted(runs_dir.glob("*/run.json")):
    info = runs.read_run_info(info_path.parent) or {}
    wall = float(walls.get(info_path.parent.name, "nan"))
    train = float(info.get("train_time") or 0)
    print(f"| {info_path.parent.name} | {info.get('mode', '')} | {(info.get('mode_choice') or {}).get('how', '')} "
          f"| {wall:.1f} | {train:.1f} | {wall - train:.1f} |")
print("\n```\n" + (logs / "stages.txt").read_text() + "```")
for name in ("predict.log", "pytest.log"):
    if (logs / name).is_file():
        print(f"\n{name} (end):\n```\n" + "".join((logs / name).read_text().splitlines(True)[-8:]) + "```")
EOF
cat "$OUT/report.md"; pack; el "done"
