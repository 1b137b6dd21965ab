#!/usr/bin/env bash
# Run a script on NP CPU processes (gloo) through `accelerate launch` and accelerate_cpu2.yaml.
# accelerate's own launcher starts local CPU processes only through mpirun; here each rank is started
# with the torchrun-style variables (RANK, LOCAL_RANK, WORLD_SIZE) that accelerate reads.
#   NP=2 scripts/launch_cpu.sh run_gradmemgpt_on_kv_retrieval.py --exp_path runs/cpu2 ...
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${NP:-2}
PY=${PY:-python}
PORT=${PORT:-$((29500 + RANDOM % 1000))}
pids=()
for ((rank = 0; rank < NP; rank++)); do
  RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=$NP LOCAL_WORLD_SIZE=$NP \
    "$PY" -m accelerate.commands.launch --config_file accelerate_cpu2.yaml --num_processes "$NP" \
    --main_process_port "$PORT" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
