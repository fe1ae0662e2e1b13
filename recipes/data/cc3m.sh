#!/usr/bin/env bash
# CC3M -> webdataset shards in OpenCLIP's format (jpg + txt + json per sample, sizes.json beside them).
# Input: Google's Train_GCC-training.tsv (caption<TAB>url, no header) from the Conceptual Captions site.
# Output: $OUTPUT/00000.tar ... + sizes.json; the normalised url/caption table at $OUTPUT.parquet (.tsv without pyarrow).
# Downloads with img2dataset: pip install 'open_clip_elip[data]'. Re-running resumes unfinished shards;
# extra arguments are passed on (e.g. --table-only to print the img2dataset command instead).
# Every variable below can be set from the environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../python.sh"  # PYTHON: $PYTHON, else the repository's .venv, else python3
DATA_ROOT=${DATA_ROOT:-data}
CC3M_TSV=${CC3M_TSV:-$DATA_ROOT/annotations/Train_GCC-training.tsv}
OUTPUT=${OUTPUT:-$DATA_ROOT/cc3m}
PROCESSES=${PROCESSES:-$(nproc)}
THREADS=${THREADS:-64}
IMAGE_SIZE=${IMAGE_SIZE:-256}
SAMPLES_PER_SHARD=${SAMPLES_PER_SHARD:-10000}

"$PYTHON" -m open_clip_elip.shards cc3m "$CC3M_TSV" --output "$OUTPUT" --processes "$PROCESSES" \
    --threads "$THREADS" --image-size "$IMAGE_SIZE" --samples-per-shard "$SAMPLES_PER_SHARD" "$@"
