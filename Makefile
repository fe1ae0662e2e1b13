# Set-up and everyday commands. `make demo` and `make test` install first (quick when nothing changed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps patch-deps test install-check lint demo bench study gpu-check compat compat-refused clean

install: $(STAMP) patch-deps system-deps

# Fashion-MNIST (real images, MIT) for the demo: a Debian package; skipped with a note elsewhere.
system-deps:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
	  echo "note: could not install dataset-fashion-mnist; the demo falls back to torchvision's download"

# torch and torchvision first, at the versions that lie on our machines' disks (see README).
$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[eval,study,test]'
	touch $(STAMP)

patch-deps: $(STAMP)
	$(PY) -m open_clip_elip.patches apply

# two test processes, one thread each: most tests wait on subprocesses (the trainer, clip_benchmark), and tiny
# models gain nothing from a second thread
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 tests

# what a pip user gets (slow, not in `make test`): the sdist and the wheel built, each and the editable tree installed
# into one scratch venv (torch once, then OpenCLIP from the registry), the start-up hook and the fixes checked, and
# two trainer steps after the fix command (tests/install_check.py). INSTALL_CHECK_ARGS=--venv DIR reuses a venv.
install-check:
	$(PYTHON) tests/install_check.py $(INSTALL_CHECK_ARGS)

lint: install
	$(PY) -m ruff check src tests recipes

demo: install
	$(PY) -m open_clip_elip.demo

bench: install
	$(PY) -m open_clip_elip.bench

# the study: its cells (regime x schedule), several seeds each; the committed one in docs/study, continued where it stopped
study: install
	$(PY) -m open_clip_elip.study --out docs/study

# on a CUDA machine: ELIP's training speed and memory against stock ViT-B-16, and OpenCLIP's trainer on each
# (docs/training.md); says so and exits 0 without CUDA. E.g. `make gpu-check GPU_CHECK_ARGS=--quick`
gpu-check: install
	$(PY) -m open_clip_elip.gpu_check $(GPU_CHECK_ARGS)

# the compatibility lane (docs/compat.md): this package against one OpenCLIP, in .venv-compat/<release>:
# `make compat OPEN_CLIP=3.1.0` (a registry release) or OPEN_CLIP=/path/to/open_clip_torch-X.whl; and the
# refusal check against an unsupported release, `make compat-refused REFUSED=2.24.0`
OPEN_CLIP ?= 3.1.0
REFUSED ?= 2.24.0
compat:
	PYTHON=$(PYTHON) tests/compat/lane.sh $(OPEN_CLIP)

compat-refused:
	PYTHON=$(PYTHON) tests/compat/lane.sh $(REFUSED) --refused

clean:
	rm -rf $(VENV) .venv-compat build src/*.egg-info .pytest_cache
