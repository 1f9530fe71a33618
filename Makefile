# Two commands on a fresh machine: `make train` (install, default run) and `make test`.
# Everything installs into the project's virtual environment .venv (made by BOOTSTRAP, reused
# when present), so no step needs root and an externally managed system Python (PEP 668) is
# left alone. `make PYTHON=/path/to/python ...` uses that interpreter as it is, with no venv.
BOOTSTRAP ?= python3
VENV := .venv
ifeq ($(origin PYTHON),command line)
ENV :=
else
PYTHON := $(VENV)/bin/python
ENV := $(PYTHON)
endif
DATA ?= /data/imagenet
GPUS ?= 1
ARGS ?=
TORCHRUN = $(PYTHON) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS)

.PHONY: install data train test test-all bench imagenet-r18 imagenet-r34 sweep-fmnist clean

# Debian and Ubuntu ship ensurepip, which venv needs for pip, apart in python3-venv: check it
# first, so that a failed attempt leaves no half-made .venv behind. pip >= 21.3 installs a
# pyproject-only project editable (PEP 660); a current pip is left as it is.
$(VENV)/bin/python:
	@$(BOOTSTRAP) -c "import ensurepip, venv" 2>/dev/null || { echo "error: $(BOOTSTRAP) \
	cannot create $(VENV): install its venv module (Debian/Ubuntu: apt-get install python3-venv) \
	or pick an interpreter with make PYTHON=/path/to/python" >&2; exit 1; }
	$(BOOTSTRAP) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q "pip>=21.3"

install: $(ENV)
	$(PYTHON) -m pip install -q -e ".[test]"

# Fashion-MNIST from Debian's package where we can; otherwise torchvision downloads it
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null \
	    && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

train: install data
	$(PYTHON) -m rpg_train $(ARGS)

test: install
	$(PYTHON) -m pytest -q

test-all: install
	$(PYTHON) -m pytest -q -m "slow or not slow"

bench: install
	$(PYTHON) scripts/bench_rpg.py

# Paper rows on ImageNet: `make imagenet-r34 DATA=/data/imagenet GPUS=8`. The batch of 256 is
# split over the GPUs; a fixed run directory lets a rerun resume after preemption.
imagenet-r18 imagenet-r34: install
	$(TORCHRUN) -m rpg_train experiment=$(subst -,_,$(subst imagenet-,imagenet_,$@)) \
	  data.root=$(DATA) data.batch_size=$$((256 / $(GPUS))) trainer.resume=auto \
	  hydra.run.dir=runs/$@ $(ARGS)

# The Fashion-MNIST studies (ResNet-20, the default 5-epoch recipe, seeds 0 and 1). Each point
# is one run directory named by its overrides under $(STUDY_DIR)/<study>; a rerun resumes
# unfinished points and only re-evaluates finished ones, so an interrupted study loses nothing.
STUDY_DIR ?= runs/fmnist
SEEDS ?= 0,1
LOGGER ?= none
SWEEP = $(PYTHON) -m rpg_train -m trainer.resume=auto trainer.progress=false logger=$(LOGGER) \
  hydra.sweep.dir=$(STUDY_DIR)/$(1) 'hydra.sweep.subdir=$${hydra.job.override_dirname}' \
  trainer.seed=$(SEEDS) $(ARGS)

# 1. the DoF law: top-1 against ring size over two decades, and the dense network
study-dof: install data
	$(call SWEEP,dof) rpg.params=1000,10000,100000
	$(call SWEEP,dof) rpg=none

# 3. ablations at the default ring (25,000): scopes, sign flips, sampling
study-ablations: install data
	$(call SWEEP,ablations) rpg=network,stage,block,layer
	$(call SWEEP,ablations) rpg.sign=false
	$(call SWEEP,ablations) rpg.sampling=ring,iid

clean:
	rm -rf outputs multirun runs wandb
