#!/usr/bin/env bash
# Everything that needs a real GPU, in one pass (about 4 minutes on a 1-GPU H200):
#   1. the training loop on CUDA logs every batch without a host sync (sync-debug mode "error")
#   2. the bug zoo on CUDA (device: auto picks the GPU)
#   3. `cockpit run` of the quickstart ladder on the GPU, and its GPU telemetry (NVML)
#   4. the engine's train stage against a hand-written loop that reads .item() every step
#   5. the app's GPU panel with a real NVML
#   6. scheduling, kill, DDP and warm forks on the GPU (benchmarks/gpu_check_ablate.sh)
#   7. the launch floor: the loop against a bare hand-written one (with and without .item()),
#      readback depth 4 / 8 / 16, NVML's cost per sample; bf16 / fp16 / compile on the device;
#      the speed stage's data/compute split on a deliberately data-bound preset
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (wheels for the app in .whl/ are installed
# to /tmp/site when present: the device image has no textual)
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu-check}}
mkdir -p "$OUT"
export PYTHONPATH=$PWD NO_COLOR=1 PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PWD:/tmp/site
fi
PY=python3
WS=/tmp/gpu-ws
rm -rf "$WS"
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv,noheader
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

step "1+2. sync-free CUDA loop, bug zoo and shipped presets on the GPU"
timeout 200 $PY -m pytest -q -p no:cacheprovider tests/test_engine_units.py tests/test_one_loop.py \
  tests/test_precision.py tests/test_zoo.py 2>&1 | tail -15

step "3. cockpit run presets/quickstart.yaml on the GPU"
timeout 120 $PY -m cockpit run presets/quickstart.yaml --workspace "$WS"
R=$(ls -td "$WS"/*/ | head -1)
$PY - "$R" <<'PYEOF'
import sys
from engine.torchfree.runfolder import RunFolder
f = RunFolder(sys.argv[1])
s = f.summary()
rows = [r for r in f.telemetry() if r.get("gpu")]
head = f.telemetry()[0]
print("device", s.get("device"), "| telemetry header", head)
if rows:
    util = [r["gpu"]["util"] for r in rows if r["gpu"].get("util") is not None]
    print(f"{len(rows)} GPU samples: util max {max(util, default=None)}%, mem {rows[-1]['gpu'].get('mem_used_mb')} MB, "
          f"power {rows[-1]['gpu'].get('power_w')} W, data_wait {[r.get('data_wait') for r in rows[-5:]]}")
steps = f.steps()
gpu_s = [v for v in steps["gpu_s"] if v == v]
print(f"{len(steps)} steps logged, {len(gpu_s)} with CUDA-event device times, median device time "
      f"{sorted(gpu_s)[len(gpu_s) // 2] * 1e3:.2f} ms" if gpu_s else "no device times")
PYEOF
timeout 90 $PY -m cockpit run presets/quickstart.yaml --stages speed --set num_workers=4 --workspace "$WS" | grep speed
timeout 90 $PY -m cockpit run presets/segmentation.yaml --stages speed --workspace "$WS" | grep speed

step "4. train stage vs hand-written loop (.item() every step) on CUDA"
timeout 150 $PY benchmarks/train_overhead.py --device cuda --steps 2000 --repeats 2

step "5. the app's GPU panel with NVML"
timeout 60 $PY benchmarks/gpu_app_check.py "$WS" "$OUT" 2>&1 | tail -45

step "6. scheduling, kill, DDP, forks on the GPU"
PYTHON=$PY timeout 300 bash benchmarks/gpu_check_ablate.sh
step "7. the launch floor, precisions and a data-bound split on the GPU"
timeout 120 $PY benchmarks/launch_floor.py --device cuda --steps 3000 --repeats 3
timeout 120 $PY -m cockpit run presets/quickstart.yaml --stages speed --set speed.compare_compile=true \
  --workspace "$WS" | grep -A3 speed
timeout 90 $PY -m cockpit run tests/zoo/blobs.yaml --stages speed --set data._target_=zoo.blobs_slow \
  --set data.delay=0.003 --workspace "$WS" | grep speed
echo "done $(date +%T)"
