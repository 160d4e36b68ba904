#!/usr/bin/env bash
# One prepared check for a lent GPU machine (device tool), under 8 minutes:
#   streaming inference on 29,000 x 25,000 px and a training step at 8,192^2 with
#   Swin-V2-T + Mamba and + Transformer-XL; prints peak CUDA memory and regions/s.
# Usage on the device machine, from the repository root:
#   bash benchmarks/gpu_check.sh            (results land in $OUT or benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! $PY -c "import xt_plugins" 2>/dev/null; then
  $PY -m pip install -q --no-deps -e . || $PY -m pip install -q -e .
fi
$PY -c "import mamba_ssm" 2>/dev/null || echo "note: mamba-ssm not importable; Mamba uses the pure-PyTorch scan"
OUTDIR=${OUT:-benchmarks/results}
PYTHONUNBUFFERED=1 timeout 470 $PY benchmarks/gpu_check.py --out "$OUTDIR" "$@"
