#!/usr/bin/env bash
# Evaluate one checkpoint with clip_benchmark on the ELIP paper's benchmark set (Table 6):
# zero-shot on ImageNet-1k, ImageNet-V2 and ImageNet-R; linear probe on CIFAR-10, CIFAR-100,
# ImageNet-1k, ImageNet-V2 and ImageNet-R. One JSON file per run, all in OUTDIR.
#
#   recipes/eval/eval_checkpoint.sh MODEL CHECKPOINT OUTDIR
#   e.g. recipes/eval/eval_checkpoint.sh ViT-B-16-elip logs/elip-b16/checkpoints/epoch_32.pt results/elip-b16
#
# CHECKPOINT is an OpenCLIP training checkpoint or state dict (or an OpenCLIP pretrained tag).
# An ELIP checkpoint is evaluated as its -elip model: without captions ELIP prunes nothing, so
# zero-shot and linear probe see exactly the stock model's image features.
# DRY_RUN=1 prints the commands instead of running them. Needs the patched clip_benchmark
# (`make patch-deps`) for linear probes without a GPU.
set -euo pipefail

# Dataset roots (clip_benchmark's layouts; it downloads ImageNet-V2 and ImageNet-R if missing).
IMAGENET_ROOT=${IMAGENET_ROOT:-data/imagenet1k}       # torchvision ImageNet: train/, val/, devkit
IMAGENETV2_ROOT=${IMAGENETV2_ROOT:-data/imagenetv2}   # ImageNetV2 matched-frequency
IMAGENET_R_ROOT=${IMAGENET_R_ROOT:-data/imagenet-r}   # ImageNet-R image folders
CIFAR10_ROOT=${CIFAR10_ROOT:-data/cifar10}            # torchvision CIFAR-10
CIFAR100_ROOT=${CIFAR100_ROOT:-data/cifar100}         # torchvision CIFAR-100
# ImageNet-V2 and ImageNet-R have no training split, and clip_benchmark trains a probe on the
# train split of the dataset it tests: give each as a clip_benchmark wds/ folder whose `test`
# split is the benchmark and whose `train` split is ImageNet's training set (for ImageNet-R, its
# 200 classes labelled as ImageNet-R's), e.g. a symlink to an ImageNet wds `train/` folder.
# open_clip_elip.evaluate.export_wds and clip_benchmark_export_wds write such folders.
LP_IMAGENETV2_ROOT=${LP_IMAGENETV2_ROOT:-data/wds_lp_imagenetv2}
LP_IMAGENET_R_ROOT=${LP_IMAGENET_R_ROOT:-data/wds_lp_imagenet-r}

BATCH_SIZE=${BATCH_SIZE:-256}
NUM_WORKERS=${NUM_WORKERS:-8}
CLIP_BENCHMARK=${CLIP_BENCHMARK:-}                    # the clip_benchmark command; default: $PYTHON -m clip_benchmark.cli
EXTRA_ARGS=${EXTRA_ARGS:-}                            # more clip_benchmark eval options, e.g. --skip_existing
LP_ARGS=${LP_ARGS:-}                                  # linear-probe options, e.g. --fewshot_epochs 20
DRY_RUN=${DRY_RUN:-0}

if [[ $# -ne 3 ]]; then
    echo "usage: $0 MODEL CHECKPOINT OUTDIR" >&2
    exit 2
fi
MODEL=$1 CHECKPOINT=$2 OUTDIR=$3
source "$(dirname "${BASH_SOURCE[0]}")/../python.sh"  # PYTHON: $PYTHON, else the repository's .venv, else python3
if [[ -n "$CLIP_BENCHMARK" ]]; then
    read -ra clip_benchmark <<<"$CLIP_BENCHMARK"
else
    clip_benchmark=("$PYTHON" -m clip_benchmark.cli)  # the environment that has open_clip_elip registers the models
fi

run() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '%q ' "$@" && echo
    else
        "$@"
    fi
}

# shellcheck disable=SC2086  # EXTRA_ARGS and LP_ARGS are option lists: split them
common=(--model "$MODEL" --pretrained "$CHECKPOINT" --batch_size "$BATCH_SIZE" --num_workers "$NUM_WORKERS"
        --output "$OUTDIR/{dataset}_{model}_{task}.json" $EXTRA_ARGS)

zero_shot() {  # DATASET ROOT
    run "${clip_benchmark[@]}" eval --task zeroshot_classification --dataset "$1" --dataset_root "$2" "${common[@]}"
}

linear_probe() {  # DATASET ROOT
    # shellcheck disable=SC2086
    run "${clip_benchmark[@]}" eval --task linear_probe --dataset "$1" --dataset_root "$2" --train_split train \
        --split test --feature_root "$OUTDIR/features" "${common[@]}" $LP_ARGS
}

[[ $DRY_RUN == 1 ]] || mkdir -p "$OUTDIR"
zero_shot imagenet1k "$IMAGENET_ROOT"
zero_shot imagenetv2 "$IMAGENETV2_ROOT"
zero_shot imagenet-r "$IMAGENET_R_ROOT"
linear_probe cifar10 "$CIFAR10_ROOT"
linear_probe cifar100 "$CIFAR100_ROOT"
linear_probe imagenet1k "$IMAGENET_ROOT"
linear_probe wds/imagenetv2 "$LP_IMAGENETV2_ROOT"
linear_probe wds/imagenet-r "$LP_IMAGENET_R_ROOT"
