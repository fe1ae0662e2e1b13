#!/usr/bin/env bash
# The compatibility lane: this package against one OpenCLIP release, in a venv of its own.
#   tests/compat/lane.sh 3.1.0              a release from the registry (open_clip_torch==3.1.0)
#   tests/compat/lane.sh /path/to/x.whl     a wheel (e.g. one built from OpenCLIP's main branch)
#   tests/compat/lane.sh 2.24.0 --refused   a release the package does not support: installed next to it with
#                                     `pip install --no-deps`, stock OpenCLIP must work as without it
# The venvs live in .venv-compat/ (git-ignored): torch and torchvision are installed once, in
# .venv-compat/torch, and hard-linked into each .venv-compat/<release> (no second copy on disk).
set -euo pipefail
cd "$(dirname "$0")/../.."
OPEN_CLIP=${1:?usage: tests/compat/lane.sh <release or wheel path> [--refused]}
MODE=${2:-}
PYTHON=${PYTHON:-python3}
ROOT=.venv-compat
TAG=$(basename "$OPEN_CLIP" .whl)
VENV=$ROOT/$TAG
SITE=lib/$($PYTHON -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')/site-packages

if [ ! -e $ROOT/torch/.installed ]; then
  rm -rf $ROOT/torch
  $PYTHON -m venv $ROOT/torch
  $ROOT/torch/bin/python -m pip install --quiet --upgrade pip
  $ROOT/torch/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  touch $ROOT/torch/.installed
fi

if [ ! -e $VENV/.installed ]; then
  rm -rf "$VENV"
  $PYTHON -m venv --without-pip "$VENV"
  cp -al $ROOT/torch/$SITE/. "$VENV/$SITE/"  # hard links: torch, torchvision and pip, at no disk cost
  case "$OPEN_CLIP" in
    *.whl) SPEC=$(realpath "$OPEN_CLIP") ;;
    *) SPEC=open_clip_torch==$OPEN_CLIP ;;
  esac
  "$VENV/bin/python" -m pip install --quiet "$SPEC" webdataset scikit-learn
  if [ "$MODE" = --refused ]; then
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  else
    "$VENV/bin/python" -m pip install --quiet -e '.[test]'
  fi
  touch "$VENV/.installed"
fi

echo "compat lane: $("$VENV/bin/python" -c 'import importlib.metadata as m; print("open_clip_torch", m.version("open_clip_torch"))')"
cd /tmp  # the installed package, not this checkout's sources on the path by accident
if [ "$MODE" = --refused ]; then
  exec env -u PYTHONPATH OMP_NUM_THREADS=1 "$OLDPWD/$VENV/bin/python" "$OLDPWD/tests/compat/refused.py"
fi
exec env -u PYTHONPATH OMP_NUM_THREADS=1 "$OLDPWD/$VENV/bin/python" "$OLDPWD/tests/compat/check.py"
