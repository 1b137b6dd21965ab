#!/usr/bin/env bash
# Fetch SQuAD v1.1 (rajpurkar/squad) with `datasets` and save it as data/squad (columns id, title,
# context, question, answers with every gold answer; the official dev set is the test split, valid is
# carved out of train whole paragraphs at a time). Needs network. OUT, PY override.
# Offline instead: python squad_utils.py --out data/   (a synthetic set in the official JSON format)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-data/}
if [ -d "$OUT/squad" ]; then
  echo "$OUT/squad exists, skipping"
  exit 0
fi
"$PY" squad_utils.py --source rajpurkar/squad --out "$OUT"
