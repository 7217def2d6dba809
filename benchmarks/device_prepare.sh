#!/usr/bin/env bash
# Get ready, here, for benchmarks/gpu_train.sh on the project's GPU machine, which has
# no internet, lacks librosa, soundfile and soxr, and receives at most 64 MiB per call
# (the repository included), while InsectSet32 is 116 MB and ../shared does not travel.
#
#     bash benchmarks/device_prepare.sh [DATA] [PARTS]
#
# Writes, under git-ignored folders of the repository:
#   .whl/                     the missing packages as Python 3.12 wheels (2 MB)
#   .device-data/part1..N     DATA (default ../shared/data/insectset32) in N parts
#                             (default 3) of under 40 MB, manifest.csv in part1
# Then carry one part per call, each call within the machine's 30 s idle time:
#   run(carry=[".device-data/part1"], command="mkdir -p /tmp/insectset32 && cp -r .device-data/part1/. /tmp/insectset32/")
#   run(carry=[".device-data/part2"], command="cp -r .device-data/part2/. /tmp/insectset32/")
#   run(carry=[".device-data/part3", ".whl"],
#       command="cp -r .device-data/part3/. /tmp/insectset32/ && bash benchmarks/gpu_train.sh $OUT /tmp/insectset32 5m")
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/insectset32}"
parts="${2:-3}"
for ignored in /.whl/ /.device-data/; do
    grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    librosa==0.11.0 soundfile soxr audioread decorator pooch platformdirs cffi pycparser
rm -rf .device-data
python3 - "$data" "$parts" <<'PY'
import csv, shutil, sys
from pathlib import Path

data, parts = Path(sys.argv[1]), int(sys.argv[2])
with open(data / "manifest.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
files = sorted({r["path"] for r in rows}, key=lambda p: -(data / p).stat().st_size)
sizes = [0] * parts
for path in files:  # largest first into the emptiest part
    part = sizes.index(min(sizes))
    target = Path(".device-data") / f"part{part + 1}" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / path, target)
    sizes[part] += (data / path).stat().st_size
shutil.copyfile(data / "manifest.csv", Path(".device-data") / "part1" / "manifest.csv")
print("parts (MB):", [round(s / 2**20, 1) for s in sizes])
PY
du -sh .whl .device-data/part*
