#!/usr/bin/env bash
# Train a site model for three grasshopper species from nine 4 s clips, starting from the
# default model (--base): the whole compact network is fine-tuned with the dynamic triplet
# loss, then the MLP and open set are fitted. About half a minute on a 2-core CPU.
#
#   bash examples/train_site_model.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-site-model}"

# site-clips/manifest.csv: path,label,split (2 training clips and 1 validation clip per species)
fieldmon train "$here/site-clips/manifest.csv" --base default --steps 60 --out "$out"
fieldmon evaluate "$out" "$here/site-clips/manifest.csv" --split validation
fieldmon scan "$here/recordings" --model "$out" --out "$out-detections.parquet"
