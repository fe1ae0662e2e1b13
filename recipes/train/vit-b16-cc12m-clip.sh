#!/usr/bin/env bash
# ViT-B/16 stock CLIP (the paper's baseline) on CC12M+, the paper's Table 6 setting:
# total batch 920 over all GPUs, 32 epochs, lr 1e-3, wd 0.1 (see common.sh for what can be overridden).
RUN_MODEL=ViT-B-16 RUN_DATA=cc12m+ PAPER_BATCH=920
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
