#!/usr/bin/env bash
# Fetch the published KV-retrieval datasets (huggingface.co/yurakuratov) into OUT/NAME with `datasets`.
# With no arguments: all 13 (N4..N128 and the noise-ratio variants of N8 and N16); or name the ones you want.
# Folders already in OUT are skipped. Without hub access it stops with one message that points to
# scripts/make_kv_datasets.sh, which generates the same family here. Override OUT or PY from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
exec "$PY" -c 'import sys, kv_dataset_utils as kv; sys.exit(kv.download_main(sys.argv[1:]))' --out "${OUT:-data/}" "$@"
