#!/usr/bin/env bash
# Joins built shard folders for training: writes each folder's sizes.json and prints the
# `--train-data '<dir1>/{00000..N}.tar::<dir2>/...' --train-num-samples TOTAL` arguments of open_clip_train.main.
# MIX picks the paper's mixes from the folders the other scripts write under $DATA_ROOT:
#   cc3m+  = CC3M + SBU + MSCOCO (paper: 4.1M pairs),  cc12m+ = CC12M + SBU + MSCOCO (paper: 10.1M pairs);
# or set SOURCES to a space-separated list of shard folders. Extra arguments are passed on (--json).
# Always pass the printed --train-num-samples: with several sources OpenCLIP reads only the first sizes.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../python.sh"  # PYTHON: $PYTHON, else the repository's .venv, else python3
DATA_ROOT=${DATA_ROOT:-data}
MIX=${MIX:-cc3m+}
case "$MIX" in
    cc3m+) default_sources="$DATA_ROOT/cc3m $DATA_ROOT/sbu $DATA_ROOT/coco-shards" ;;
    cc12m+) default_sources="$DATA_ROOT/cc12m $DATA_ROOT/sbu $DATA_ROOT/coco-shards" ;;
    *) echo "manifest.sh: MIX must be cc3m+ or cc12m+ (or set SOURCES), got '$MIX'" >&2; exit 2 ;;
esac
SOURCES=${SOURCES:-$default_sources}

# shellcheck disable=SC2086  # SOURCES is a list of folders
"$PYTHON" -m open_clip_elip.shards manifest $SOURCES "$@"
