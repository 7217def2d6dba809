#!/usr/bin/env bash
# Train the paper's network (its own recipe) and the compact network (fieldmon's
# recipe) on InsectSet32 with the same wall-clock budget each, and collect their
# validation scores: the README's paper-vs-compact comparison on a GPU.
#
#     bash benchmarks/gpu_train.sh OUT [DATA] [BUDGET]
#
#   OUT     receives paper/ and compact/ (bundles), their logs, and scores.json
#   DATA    InsectSet32 folder with manifest.csv, or a manifest (default ../shared/data/insectset32)
#   BUDGET  per network, as for --time-budget (default 5m)
#
# On the project's GPU machine, benchmarks/device_prepare.sh (run here first) says
# how the data and the missing wheels get there. On a CPU it runs as well (a tiny
# DATA and BUDGET make it a quick check of the script itself).
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu_train.sh OUT [DATA] [BUDGET]}"
data="${2:-../shared/data/insectset32}"
budget="${3:-5m}"
manifest="$data"
[ -d "$data" ] && manifest="$data/manifest.csv"
manifest="$(cd "$(dirname "$manifest")" && pwd)/$(basename "$manifest")"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ! python3 -c "import librosa, soundfile, soxr" 2>/dev/null; then
    [ -d .whl ] || { echo "librosa, soundfile or soxr is missing and there is no .whl/ to install them from" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fieldmon-site .whl/*.whl
    export PYTHONPATH="/tmp/fieldmon-site"
fi
python3 -c "import fieldmon" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
device=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU: $(nproc) CPU cores"; } \
    | tee "$out/device.txt"
status=0
for network in paper compact; do
    rm -rf "${out:?}/$network"
    # Validation every 100 steps on a GPU; on a CPU (a check of this script) every 5.
    every=100; [ "$device" = cpu ] && every=5
    python3 -m fieldmon train "$manifest" --out "$out/$network" --network "$network" --time-budget "$budget" \
        --device "$device" --cache "$out/cache" --eval-every "$every" --checkpoint-every 500 \
        > "$out/$network.log" 2>&1 || { status=1; echo "$network failed, see $out/$network.log" >&2; }
    tail -n 3 "$out/$network.log"
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
scores = {}
for network in ("paper", "compact"):
    path = out / network / "model.json"
    if path.is_file():
        meta = json.loads(path.read_text())
        scores[network] = {"model_id": meta["model_id"], "device": meta["training"]["device"],
                           "steps": meta["training"]["steps_done"], "wall_seconds": meta["training"]["wall_seconds"],
                           "validation": meta["metrics"].get("validation"), "baseline": meta["metrics"].get("baseline")}
(out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
print(json.dumps({k: (v["steps"], v["validation"]["file_macro_f1"]) for k, v in scores.items()}))
PY
exit $status
