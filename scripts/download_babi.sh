#!/usr/bin/env bash
# Fetch BABILong "0k" qa1-qa5 (yurakuratov/babilong_qaN_0k) with `datasets` and save each as
# data/babilong_qaN_0k (columns context, query, target, answers; a valid split carved out of train
# where the hub has none). Needs network; folders that exist are skipped. TASKS, OUT, PY override.
# Offline instead: python babi_utils.py --task qa1 --out data/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-data/}
TASKS=${TASKS:-"qa1 qa2 qa3 qa4 qa5"}
for task in $TASKS; do
  if [ -d "$OUT/babilong_${task}_0k" ]; then
    echo "$OUT/babilong_${task}_0k exists, skipping"
    continue
  fi
  "$PY" babi_utils.py --task "$task" --source "yurakuratov/babilong_${task}_0k" --out "$OUT"
done
