#!/usr/bin/env bash
# MSCOCO captions -> webdataset shards in OpenCLIP's format (jpg + txt + json per sample, sizes.json beside them),
# one sample per caption annotation (about 5 per image), from a local COCO copy: nothing is downloaded.
# Input: annotations/captions_train2017.json (or captions_train2014.json) and the image folder holding
# its file_name entries (train2017/ or train2014/).
# Output: $OUTPUT/00000.tar ... + sizes.json. Set OVERWRITE=1 to replace shards already in $OUTPUT.
# Every variable below can be set from the environment; extra arguments are passed on.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../python.sh"  # PYTHON: $PYTHON, else the repository's .venv, else python3
DATA_ROOT=${DATA_ROOT:-data}
COCO_CAPTIONS=${COCO_CAPTIONS:-$DATA_ROOT/coco/annotations/captions_train2017.json}
COCO_IMAGES=${COCO_IMAGES:-$DATA_ROOT/coco/train2017}
OUTPUT=${OUTPUT:-$DATA_ROOT/coco-shards}
PROCESSES=${PROCESSES:-$(nproc)}
IMAGE_SIZE=${IMAGE_SIZE:-256}
SAMPLES_PER_SHARD=${SAMPLES_PER_SHARD:-10000}
OVERWRITE=${OVERWRITE:-0}

extra=()
if [ "$OVERWRITE" = 1 ]; then extra+=(--overwrite); fi
"$PYTHON" -m open_clip_elip.shards coco "$COCO_CAPTIONS" "$COCO_IMAGES" --output "$OUTPUT" \
    --processes "$PROCESSES" --image-size "$IMAGE_SIZE" --samples-per-shard "$SAMPLES_PER_SHARD" \
    ${extra[@]+"${extra[@]}"} "$@"
