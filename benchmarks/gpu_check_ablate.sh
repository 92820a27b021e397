#!/usr/bin/env bash
# The GPU paths of scheduling, kill, fork and DDP, checked on a machine with one NVIDIA GPU
# (written for a 1-GPU H200; about 2-3 minutes). CPU CI covers everything else.
#
#     bash benchmarks/gpu_check_ablate.sh          # in the project's environment
#
# One line per check, PASS or FAIL with its figures; exit 1 if any check failed.
#   nvml      NVML finds the GPU; the slot table shows it free
#   foreign   a CUDA process cockpit did not start shows as foreign, and a run placed on that
#             GPU says so (summary gpu_note); the run trains on cuda with GPU telemetry
#   queue     a second run on the one GPU queues ("1st in line for 1 GPU"), starts once the
#             first ends; the scheduling latency
#   kill      `cockpit kill` of a GPU run with DataLoader workers: processes gone and the GPU
#             memory released (NVML lists none of its pids) within 10 s; the latency
#   ddp       gpus: 2 on this one GPU (COCKPIT_FAKE_GPUS=2: both ranks share it, so gloo
#             instead of NCCL): multi_gpu passes on cuda tensors with TF32 off, the train stage
#             logs every step once from rank 0 through the lazy CUDA readback
#   fork      a warm single-GPU fork of the DDP run continues from its checkpoint, optimizer
#             state included
#   ddp-kill  `cockpit kill` of a DDP run on the GPU: no rank left, memory released
# Not covered with one GPU: NCCL itself (it refuses two ranks on one GPU) — run the ddp check
# on a 2-GPU machine without COCKPIT_FAKE_GPUS to see "nccl on cuda".
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH=$PWD NO_COLOR=1
unset COCKPIT_FAKE_GPUS COCKPIT_CPU_SLOTS CUDA_VISIBLE_DEVICES COCKPIT_WORKSPACE
WS=$(mktemp -d)/runs
mkdir -p "$WS"
Q=presets/quickstart.yaml
FAILS=0
ck() { local t=$1; shift; timeout "$t" "$PY" -m cockpit "$@" --workspace "$WS"; }  # ck SECONDS ARGS...
result() {  # result NAME STATUS DETAIL
  echo "$2 $1 — $3"
  [ "$2" = PASS ] || FAILS=$((FAILS + 1))
}
newest() { ls -td "$WS"/*/ | head -1; }
py() { local t=$1; shift; timeout "$t" "$PY" - "$@"; }  # py SECONDS ARGS... < script

# ---- nvml
out=$(py 60 "$WS" <<'EOF'
import sys
from engine.torchfree import slots
print(slots.gpu_indices(), "|", slots.describe_slots(sys.argv[1]))
EOF
)
[[ "$out" == "[0] | GPUs: 0 free"* ]] && result nvml PASS "$out" || result nvml FAIL "$out"

# ---- foreign
"$PY" -c "import torch, time; x = torch.zeros(1 << 28, device='cuda'); time.sleep(90)" &
FOREIGN=$!
out=$(py 60 "$WS" <<'EOF'
import sys, time
from engine.torchfree import slots
for _ in range(200):
    views = slots.slot_views(sys.argv[1])
    if views and views[0].foreign:
        print("seen", views[0].foreign)
        break
    time.sleep(0.1)
else:
    print("NVML never showed the foreign process")
EOF
)
ck 120 run "$Q" --stages train --set train.steps=300 > /dev/null
R=$(newest)
out2=$(py 60 "$R" <<'EOF'
import json, sys
from engine.torchfree.runfolder import RunFolder
f = RunFolder(sys.argv[1]); s = f.summary()
gpu_rows = [r for r in f.telemetry() if isinstance(r.get("gpu"), dict) and r["gpu"].get("util") is not None]
ok = (s["status"] == "passed" and s["gpus"] == [0] and s["device"].startswith("cuda")
      and "cockpit did not start" in (s.get("gpu_note") or "") and gpu_rows)
print("ok" if ok else "bad", s["status"], s.get("gpus"), s.get("device"), "|", s.get("gpu_note"), "|", len(gpu_rows), "GPU samples")
EOF
)
kill "$FOREIGN" 2>/dev/null; wait "$FOREIGN" 2>/dev/null
[[ "$out" == seen* && "$out2" == ok* ]] && result foreign PASS "$out2" || result foreign FAIL "$out / $out2"

# ---- queue
ck 60 run "$Q" --stages train --set train.steps=3000 --detach > /dev/null; A=$(newest)
sleep 0.2
ck 60 run "$Q" --stages train --set train.steps=100 --detach > /dev/null; B=$(newest)
out=$(py 150 "$A" "$B" <<'EOF'
import sys, time
from engine.torchfree.runfolder import RunFolder
a, b = RunFolder(sys.argv[1]), RunFolder(sys.argv[2])
seen = ""
while b.summary().get("status") in ("queued", None) or not b.summary().get("started"):
    seen = b.summary().get("queue") or seen
    time.sleep(0.05)
while b.summary().get("status") == "running":
    time.sleep(0.1)
sa, sb = a.summary(), b.summary()
lat = sb["started"] - sa["ended"]
ok = seen == "1st in line for 1 GPU, 1 of 1 busy" and sb["status"] == "passed" and 0 <= lat < 2
print("ok" if ok else "bad", f"queued as '{seen}', started {lat * 1000:.0f} ms after the GPU freed", sb["status"])
EOF
)
[[ "$out" == ok* ]] && result queue PASS "$out" || result queue FAIL "$out"

# ---- kill (and GPU memory released)
kill_check() {  # kill_check NAME [--set ...]
  local name=$1; shift
  ck 60 run "$Q" --stages train --set train.steps=1000000 --set num_workers=2 "$@" --detach > /dev/null
  local R; R=$(newest)
  local out; out=$(py 150 "$R" <<'EOF'
import subprocess, sys, time
import pynvml
from cockpit import launch
from engine.torchfree.runfolder import RunFolder
f = RunFolder(sys.argv[1])
while len(f.steps()) < 200:
    time.sleep(0.1)
time.sleep(1)
tree = launch.process_tree(launch.engine_process(f))
tree = launch._merge(tree, [q for p in launch.recorded_processes(f) for q in launch.process_tree(p)])
pids = {p.pid for p in tree}
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
def on_gpu():
    return {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)} & pids
before = on_gpu()
t0 = time.monotonic()
r = subprocess.run([sys.executable, "-m", "cockpit", "kill", f.run_id, "--workspace", str(f.path.parent)],
                   capture_output=True, text=True)
killed = time.monotonic() - t0
while (any(launch._running(p) for p in tree) or on_gpu()) and time.monotonic() - t0 < 30:
    time.sleep(0.05)
released = time.monotonic() - t0
s = f.summary()
ok = r.returncode == 0 and before and not on_gpu() and released < 10 and s["status"] == "killed"
print("ok" if ok else "bad", f"{len(tree)} processes, {len(before)} on the GPU; `cockpit kill` returned after "
      f"{killed:.2f} s, all gone and GPU memory released after {released:.2f} s; status {s['status']}")
EOF
)
  [[ "$out" == ok* ]] && result "$name" PASS "$out" || result "$name" FAIL "$out"
}
kill_check kill

# ---- ddp on one GPU (two ranks share it through gloo)
COCKPIT_FAKE_GPUS=2 ck 240 run "$Q" --set gpus=2 --stages multi_gpu,train \
  --set "train={steps: 300, eval_every: 100, checkpoint_every: 100}" > /dev/null
D=$(newest)
out=$(py 60 "$D" <<'EOF'
import sys
from engine.torchfree.runfolder import RunFolder
f = RunFolder(sys.argv[1]); s = f.summary()
st = {x["name"]: x for x in s["stages"]}
mg, tr = st.get("multi_gpu", {}), st.get("train", {})
steps = list(f.steps()["step"])
gpu_s = [v for v in f.steps()["gpu_s"] if v == v]
ok = (s["status"] == "passed" and "gloo on cuda" in mg.get("reason", "") and steps == list(range(1, 301))
      and len(gpu_s) == 300 and "(DDP: 2 processes, gloo)" in tr.get("reason", ""))
m = mg.get("metrics", {})
print("ok" if ok else "bad", s["status"], "|", mg.get("reason"), "|", tr.get("reason"),
      f"| scaling {m.get('scaling')}, {len(steps)} steps logged, {len(gpu_s)} with CUDA-event times")
EOF
)
[[ "$out" == ok* ]] && result ddp PASS "$out" || result ddp FAIL "$out"

# ---- warm fork of the DDP run, on the one GPU in one process
ck 120 fork "$(basename "$D")" --warm --set gpus=1 --set train.steps=100 > /dev/null
F=$(newest)
out=$(py 60 "$F" <<'EOF'
import sys
from engine.torchfree.runfolder import RunFolder
f = RunFolder(sys.argv[1]); s = f.summary()
checks = s["stages"][0]["checks"] if s.get("stages") else []
steps = list(f.steps()["step"])
ok = (s["status"] == "passed" and s["fork_step"] == 300 and steps[:1] == [301]
      and checks and checks[0]["detail"] == "restored model weights and optimizer state from step 300")
print("ok" if ok else "bad", s["status"], "fork_step", s.get("fork_step"), "|", checks[0]["detail"] if checks else "-")
EOF
)
[[ "$out" == ok* ]] && result fork PASS "$out" || result fork FAIL "$out"

# ---- kill a DDP run on the GPU
COCKPIT_FAKE_GPUS=2 kill_check ddp-kill --set gpus=2 --set num_workers=1

echo "workspace: $WS"
[ "$FAILS" -eq 0 ] && echo "all GPU checks passed" || echo "$FAILS GPU check(s) failed"
exit $((FAILS > 0))
