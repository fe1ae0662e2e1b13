#!/usr/bin/env bash
# ViT-S/16 ELIP (text-guided token pruning and merging) on CC3M+, the paper's Table 6 setting:
# total batch 1760 over all GPUs, 32 epochs, lr 1e-3, wd 0.1 (see common.sh for what can be overridden).
RUN_MODEL=ViT-S-16-elip RUN_DATA=cc3m+ PAPER_BATCH=1760
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
