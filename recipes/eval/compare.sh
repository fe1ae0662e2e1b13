#!/usr/bin/env bash
# A stock and an ELIP checkpoint side by side: both through eval_checkpoint.sh (same datasets,
# same settings; the environment variables there apply), then the paper's table of the two,
# the ELIP row as a percentage of the stock one, and the paper's own figures beside them.
#
#   recipes/eval/compare.sh STOCK_MODEL STOCK_CHECKPOINT ELIP_MODEL ELIP_CHECKPOINT OUTDIR
#   e.g. recipes/eval/compare.sh ViT-B-16 logs/clip-b16/checkpoints/epoch_32.pt \
#            ViT-B-16-elip logs/elip-b16/checkpoints/epoch_32.pt results/b16
#
# Results: OUTDIR/stock/*.json, OUTDIR/elip/*.json, and OUTDIR/table.md, OUTDIR/table.csv.
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../python.sh"  # PYTHON: $PYTHON, else the repository's .venv, else python3
DRY_RUN=${DRY_RUN:-0}

if [[ $# -ne 5 ]]; then
    echo "usage: $0 STOCK_MODEL STOCK_CHECKPOINT ELIP_MODEL ELIP_CHECKPOINT OUTDIR" >&2
    exit 2
fi
here=$(dirname "$0")

"$here/eval_checkpoint.sh" "$1" "$2" "$5/stock"
"$here/eval_checkpoint.sh" "$3" "$4" "$5/elip"
table=("$PYTHON" -m open_clip_elip.results "$5/stock" "$5/elip" --baseline "$1" --paper --out "$5/table")
if [[ $DRY_RUN == 1 ]]; then
    printf '%q ' "${table[@]}" && echo
else
    "${table[@]}"
fi
