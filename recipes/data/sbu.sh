#!/usr/bin/env bash
# SBU Captions -> webdataset shards in OpenCLIP's format (jpg + txt + json per sample, sizes.json beside them).
# Input: the SBU release's two line-aligned files SBU_captioned_photo_dataset_urls.txt and
# SBU_captioned_photo_dataset_captions.txt. (For the parquet variant with columns image_url, caption use
# `python -m open_clip_elip.shards urls FILE.parquet --url-col image_url --output ...`.)
# Output: $OUTPUT/00000.tar ... + sizes.json; the normalised url/caption table at $OUTPUT.parquet (.tsv without pyarrow).
# Downloads with img2dataset: pip install 'open_clip_elip[data]'. Re-running resumes unfinished shards;
# extra arguments are passed on (e.g. --table-only to print the img2dataset command instead).
# Every variable below can be set from the environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../python.sh"  # PYTHON: $PYTHON, else the repository's .venv, else python3
DATA_ROOT=${DATA_ROOT:-data}
SBU_URLS=${SBU_URLS:-$DATA_ROOT/annotations/SBU_captioned_photo_dataset_urls.txt}
SBU_CAPTIONS=${SBU_CAPTIONS:-$DATA_ROOT/annotations/SBU_captioned_photo_dataset_captions.txt}
OUTPUT=${OUTPUT:-$DATA_ROOT/sbu}
PROCESSES=${PROCESSES:-$(nproc)}
THREADS=${THREADS:-64}
IMAGE_SIZE=${IMAGE_SIZE:-256}
SAMPLES_PER_SHARD=${SAMPLES_PER_SHARD:-10000}

"$PYTHON" -m open_clip_elip.shards sbu "$SBU_URLS" "$SBU_CAPTIONS" --output "$OUTPUT" --processes "$PROCESSES" \
    --threads "$THREADS" --image-size "$IMAGE_SIZE" --samples-per-shard "$SAMPLES_PER_SHARD" "$@"
