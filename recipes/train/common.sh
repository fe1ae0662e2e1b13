# Shared part of the ELIP / stock CLIP pre-training recipes, sourced by the run scripts beside it.
#
# A run script sets RUN_MODEL (OpenCLIP model name), RUN_DATA (cc3m+ or cc12m+) and PAPER_BATCH
# (the paper's total batch over all GPUs), then sources this file. Every variable below can be set
# from the environment, e.g.  DATA_ROOT=/datasets GPUS_PER_NODE=8 recipes/train/vit-s16-cc3m-elip.sh
#
#   LAUNCHER=torchrun (default)  one node: torchrun --nproc_per_node $GPUS_PER_NODE
#   LAUNCHER=srun                in a SLURM allocation, one task per GPU (recipes/train/slurm.sbatch sets it)
#   DRY_RUN=1                    print the command instead of running it (also before the shards exist)
#   PYTHON                       the environment's python (default: the repository's .venv, else python3)
#
# The per-GPU batch is PAPER_BATCH / (NODES x GPUS_PER_NODE): the paper's total batch at any GPU count
# that divides it, with no gradient accumulation. Rerunning a recipe resumes its run (--resume latest).
set -euo pipefail

# --- data: the shard folders recipes/data/*.sh write ----------------------------------------------
DATA_ROOT=${DATA_ROOT:-data}
CC3M_DIR=${CC3M_DIR:-$DATA_ROOT/cc3m}
CC12M_DIR=${CC12M_DIR:-$DATA_ROOT/cc12m}
SBU_DIR=${SBU_DIR:-$DATA_ROOT/sbu}
COCO_DIR=${COCO_DIR:-$DATA_ROOT/coco-shards}
TRAIN_DATA=${TRAIN_DATA:-}               # set both to skip counting the shards (open_clip_elip.shards manifest)
TRAIN_NUM_SAMPLES=${TRAIN_NUM_SAMPLES:-}
IMAGENET_VAL=${IMAGENET_VAL:-}           # ImageNet val folder: OpenCLIP's zero-shot eval during training
LOG_DIR=${LOG_DIR:-logs}
source "$(dirname "${BASH_SOURCE[0]}")/../python.sh"  # PYTHON: $PYTHON, else the repository's .venv, else python3

# --- machines -------------------------------------------------------------------------------------
LAUNCHER=${LAUNCHER:-torchrun}
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}        # the paper: 4 GPUs in all
WORKERS=${WORKERS:-8}                    # data loader processes per GPU

# --- training: the paper's settings (docs/method.md) and OpenCLIP's usual flags -------------------
EPOCHS=${EPOCHS:-32}
LR=${LR:-1e-3}
WD=${WD:-0.1}
WARMUP=${WARMUP:-2000}                   # steps: about one CC3M+ epoch at the paper's ViT-S/16 batch
PRECISION=${PRECISION:-amp}
SEED=${SEED:-0}
ZEROSHOT_FREQUENCY=${ZEROSHOT_FREQUENCY:-4}
SAVE_FREQUENCY=${SAVE_FREQUENCY:-1}
REPORT_TO=${REPORT_TO:-}                 # e.g. tensorboard
NAME=${NAME:-${RUN_MODEL}_${RUN_DATA}}
DRY_RUN=${DRY_RUN:-0}

GPUS=$((NODES * GPUS_PER_NODE))
if (( GPUS < 1 || PAPER_BATCH % GPUS )); then
  echo "error: the paper's total batch $PAPER_BATCH does not split evenly over $GPUS GPUs" \
       "(NODES=$NODES x GPUS_PER_NODE=$GPUS_PER_NODE): use a GPU count that divides it" >&2
  exit 2
fi
BATCH_PER_GPU=$((PAPER_BATCH / GPUS))

case "$RUN_DATA" in
  cc3m+)  SOURCES=("$CC3M_DIR" "$SBU_DIR" "$COCO_DIR") ;;   # CC3M + SBU + MSCOCO (paper: 4.1M pairs)
  cc12m+) SOURCES=("$CC12M_DIR" "$SBU_DIR" "$COCO_DIR") ;;  # CC12M + SBU + MSCOCO (paper: 10.1M pairs)
  *) echo "error: RUN_DATA must be cc3m+ or cc12m+, got '$RUN_DATA'" >&2; exit 2 ;;
esac
if [[ -z "$TRAIN_DATA" || -z "$TRAIN_NUM_SAMPLES" ]]; then
  missing=()
  for folder in "${SOURCES[@]}"; do
    compgen -G "$folder/*.tar" >/dev/null || missing+=("$folder")
  done
  how="build them with recipes/data/*.sh (DATA_ROOT=$DATA_ROOT), or set TRAIN_DATA and TRAIN_NUM_SAMPLES"
  problem=
  if (( ${#missing[@]} )); then
    problem="no $RUN_DATA shards in ${missing[*]}"
  elif manifest=$("$PYTHON" -m open_clip_elip.shards manifest --json "${SOURCES[@]}"); then
    read -r TRAIN_NUM_SAMPLES TRAIN_DATA < <("$PYTHON" -c \
      'import json, sys; m = json.load(sys.stdin); print(m["train_num_samples"], m["train_data"])' <<<"$manifest")
  else
    problem="the $RUN_DATA shards in ${SOURCES[*]} could not be counted (see above)"
  fi
  if [[ -n "$problem" && "$DRY_RUN" != 1 ]]; then
    echo "error: $problem: $how" >&2
    exit 2
  elif [[ -n "$problem" ]]; then  # a dry run still shows the command, with placeholders for what is counted
    echo "# dry run, data missing: $problem: $how. In the command below NNNNN (the last shard of each" \
         "source) and N (--train-num-samples) stand for what is counted from the shards once they exist." >&2
    TRAIN_DATA=$(printf '%s/{00000..NNNNN}.tar::' "${SOURCES[@]}")
    TRAIN_DATA=${TRAIN_DATA%::}
    TRAIN_NUM_SAMPLES=N
  fi
fi

TRAIN_ARGS=(
  --model "$RUN_MODEL"
  --train-data "$TRAIN_DATA"
  --train-num-samples "$TRAIN_NUM_SAMPLES"
  --dataset-type webdataset
  --batch-size "$BATCH_PER_GPU"
  --accum-freq 1
  --epochs "$EPOCHS"
  --lr "$LR"
  --wd "$WD"
  --warmup "$WARMUP"
  --precision "$PRECISION"
  --workers "$WORKERS"
  --seed "$SEED"
  --local-loss
  --gather-with-grad
  --save-frequency "$SAVE_FREQUENCY"
  --zeroshot-frequency "$ZEROSHOT_FREQUENCY"
  --logs "$LOG_DIR"
  --name "$NAME"
  --resume latest
)
if [[ -n "$IMAGENET_VAL" ]]; then TRAIN_ARGS+=(--imagenet-val "$IMAGENET_VAL"); fi
if [[ -n "$REPORT_TO" ]]; then TRAIN_ARGS+=(--report-to "$REPORT_TO"); fi

case "$LAUNCHER" in
  # `--` ends torchrun's own options: without it torchrun's parser (Python 3.11 argparse) rejects the
  # trainer's --logs as an ambiguous abbreviation of its --logs-specs. `python -m torch.distributed.run` is
  # torchrun, from $PYTHON's environment (a torchrun from PATH may belong to one without open_clip_elip).
  torchrun) COMMAND=("$PYTHON" -m torch.distributed.run --nnodes 1 --nproc_per_node "$GPUS_PER_NODE"
                     -m -- open_clip_train.main) ;;
  srun)     COMMAND=(srun --cpu_bind=v --accel-bind=gn "$PYTHON" -u -m open_clip_train.main) ;;
  *) echo "error: LAUNCHER must be torchrun or srun, got '$LAUNCHER'" >&2; exit 2 ;;
esac
COMMAND+=("${TRAIN_ARGS[@]}")

echo "# $NAME: $GPUS GPUs x batch $BATCH_PER_GPU = $PAPER_BATCH, $EPOCHS epochs, lr $LR, wd $WD," \
     "$TRAIN_NUM_SAMPLES samples" >&2
if [[ "$DRY_RUN" == 1 ]]; then
  printf '%q ' "${COMMAND[@]}"
  echo
  exit 0
fi
if [[ "$LAUNCHER" == srun ]]; then
  MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
  MASTER_PORT=${MASTER_PORT:-12802}
  export MASTER_ADDR MASTER_PORT
fi
exec "${COMMAND[@]}"
