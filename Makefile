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
# GPUS: processes per node, all GPUs that nvidia-smi lists (1 without it; under
# CUDA_VISIBLE_DEVICES set GPUS= yourself). NODES > 1: run the same make command on every
# node with MASTER_ADDR = a host all nodes reach (c10d rendezvous there) and DATA / the run
# directories on a shared file system.
GPUS ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | wc -l); echo $$(( n > 0 ? n : 1 )))
NODES ?= 1
MASTER_ADDR ?= localhost
MASTER_PORT ?= 29500
ARGS ?=
ifeq ($(NODES),1)
TORCHRUN = $(PYTHON) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS)
else
TORCHRUN = $(PYTHON) -m torch.distributed.run --nnodes=$(NODES) --nproc_per_node=$(GPUS) \
  --rdzv_backend=c10d --rdzv_endpoint=$(MASTER_ADDR):$(MASTER_PORT) --rdzv_id=rpg-$@-$$row
endif

.PHONY: install data train test test-all lint bench bench-train bench-data gpu-check imagenet-r18 imagenet-r34 \
	cifar10 cifar100 sweep-fmnist study-dof study-equal-dof study-ablations aggregate-fmnist \
	study-capacity aggregate-capacity compress clean

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

# ruff and mypy as pyproject.toml's [tool.ruff] and [tool.mypy] set them; .ci/run runs this
lint: install
	$(PYTHON) -m ruff check src tests scripts
	$(PYTHON) -m mypy

bench: install
	$(PYTHON) scripts/bench_rpg.py

# the engine against a bare training loop, and the ImageNet loader against a bare DataLoader
bench-train: install
	$(PYTHON) scripts/bench_train.py $(ARGS)

bench-data: install
	$(PYTHON) scripts/bench_data.py $(ARGS)

# every GPU figure in one run of at most 8 minutes (docs/gpu.md): the CUDA tests, bench_rpg,
# bench_train and the ImageNet ResNet-18 rows' images/second, into docs/results/gpu-check.md.
# DEVICE=cpu: the same at tiny sizes, into runs/gpu-check-cpu.md (the GPU report is kept)
DEVICE ?= cuda
gpu-check: install
	$(PYTHON) scripts/gpu_check.py --device $(DEVICE) $(ARGS)

# Paper rows on ImageNet, one fixed run directory each under runs/imagenet (a rerun resumes
# after preemption), then the table beside the paper's numbers:
#   make imagenet-r34 DATA=/data/imagenet [GPUS=8] [NODES=2 MASTER_ADDR=host]
# The recipe's batch of 256 is split over all processes.
ROWS_imagenet-r18 = imagenet_r18_rpg imagenet_r18_dense
ROWS_imagenet-r34 = imagenet_r34_rpg imagenet_r34_rpg_tiny imagenet_r34_dense
imagenet-r18 imagenet-r34: install
	@set -e; for row in $(ROWS_$@); do \
	  $(TORCHRUN) -m rpg_train experiment=$$row data.root=$(DATA) \
	    data.batch_size=$$((256 / ($(GPUS) * $(NODES)))) trainer.resume=auto \
	    hydra.run.dir=runs/imagenet/$$row $(ARGS); \
	done
	$(PYTHON) scripts/paper_table.py $(addprefix runs/imagenet/,$(ROWS_$@))

# CIFAR rows: ResNet18 (CIFAR stem) and ResNet56, dense and at several ring sizes, one process
# per run (a sweep under runs/cifar10 or runs/cifar100, resumable), then their table.
CIFAR_RINGS ?= 10000,100000,300000
cifar10 cifar100: install
	$(PYTHON) -m rpg_train -m experiment=$@ model=resnet18,resnet56 trainer.resume=auto \
	  hydra.sweep.dir=runs/$@ 'hydra.sweep.subdir=$${hydra.job.override_dirname}' \
	  rpg.params=$(CIFAR_RINGS) $(ARGS)
	$(PYTHON) -m rpg_train -m experiment=$@ model=resnet18,resnet56 trainer.resume=auto \
	  hydra.sweep.dir=runs/$@ 'hydra.sweep.subdir=$${hydra.job.override_dirname}' \
	  rpg=none $(ARGS)
	$(PYTHON) scripts/paper_table.py runs/$@

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

# 2. RPG against the other ways of spending the same trainable count. The width models fix
# the points; RPG's ring, hashing's ring and pruning's non-zero count are solved to match them
# exactly (match.width). Pruning starts from study-dof's dense runs: run that first.
WIDTHS ?= 0.25,0.5,0.75
study-equal-dof: install data
	$(call SWEEP,equal-dof) rpg=none model.width=$(WIDTHS)
	$(call SWEEP,equal-dof) match.width=$(WIDTHS)
	$(call SWEEP,equal-dof) match.width=$(WIDTHS) rpg.sampling=iid
	$(call SWEEP,equal-dof) experiment=fmnist_prune match.width=$(WIDTHS) \
	  'prune.init="$(STUDY_DIR)/dof/rpg=none,trainer.seed=$${trainer.seed}/last.pt"'

# 3. ablations at the default ring (25,000): scopes, sign flips, sampling; and a deeper
# generated network at equal DoF (ResNet-56 matched to study 2's ResNet-20 at width 0.25)
study-ablations: install data
	$(call SWEEP,ablations) rpg=network,stage,block,layer
	$(call SWEEP,ablations) rpg.sign=false
	$(call SWEEP,ablations) rpg.sampling=ring,iid
	$(call SWEEP,ablations) model=resnet56 match.model=resnet20 match.width=0.25

# all three studies, then their tables and plots (docs/results/fmnist)
sweep-fmnist: study-dof study-equal-dof study-ablations
	$(MAKE) aggregate-fmnist

# mirrors each point's results.json, config.yaml, metrics.jsonl and failed.txt (not
# checkpoints) into docs/results/fmnist/runs, and aggregates from there, so the tables can be
# rebuilt from the repository alone and still name the points that failed or did not finish
RESULTS = docs/results/fmnist
aggregate-fmnist: install
	@[ ! -d $(STUDY_DIR) ] || $(PYTHON) scripts/publish_runs.py $(STUDY_DIR) $(RESULTS)/runs
	$(PYTHON) scripts/aggregate.py --out $(RESULTS)/dof-and-baselines \
	  $$(ls -d $(RESULTS)/runs/dof $(RESULTS)/runs/equal-dof 2>/dev/null) \
	  $(if $(filter wandb,$(LOGGER)),--wandb)
	$(PYTHON) scripts/aggregate.py --out $(RESULTS)/ablations \
	  $$(ls -d $(RESULTS)/runs/ablations \
	    $(RESULTS)/runs/equal-dof/match.width=0.25,trainer.seed=* 2>/dev/null)

# 5. the capacity-limited study (docs/studies.md): ResNet-20 at width 0.25, whose 16,704
# generated weights give rings at T/N = 1, 2, 4, 8; at every size RPG, hashing (iid), plain
# recurrence, RPG with the random-subspace offset and RPG without signs, and the dense
# width-0.25 model; 4 seeds, the tables' seed following trainer.seed. Seed-major (every arm
# for seeds 0,1, then for 2,3), so a study stopped half-way still pairs its arms by seed.
CAPACITY_DIR ?= runs/fmnist-capacity
CAPACITY_SEEDS ?= 0,1 2,3
CAPACITY_RINGS ?= 16704,8352,4176,2088
CAPACITY = $(PYTHON) -m rpg_train -m trainer.resume=auto trainer.progress=false \
  logger=$(LOGGER) hydra.sweep.dir=$(CAPACITY_DIR) \
  'hydra.sweep.subdir=$${hydra.job.override_dirname}' model.width=0.25 data.val_split=5000 \
  trainer.seed=$$seeds $(ARGS)
study-capacity: install data
	@set -e; for seeds in $(CAPACITY_SEEDS); do \
	  $(CAPACITY) rpg.params=$(CAPACITY_RINGS) rpg.sampling=even,iid; \
	  $(CAPACITY) rpg.params=$(CAPACITY_RINGS) rpg.sampling=plain rpg.sign=false; \
	  $(CAPACITY) rpg.params=$(CAPACITY_RINGS) rpg.offset=true; \
	  $(CAPACITY) rpg.params=$(CAPACITY_RINGS) rpg.sign=false; \
	  $(CAPACITY) rpg=none; \
	done

# the capacity study's tables, paired intervals, predictions and plots, from the points
# mirrored into docs/results/fmnist-capacity/runs (as aggregate-fmnist does)
CAPACITY_RESULTS = docs/results/fmnist-capacity
aggregate-capacity: install
	@[ ! -d $(CAPACITY_DIR) ] || $(PYTHON) scripts/publish_runs.py --with-last $(CAPACITY_DIR) \
	  $(CAPACITY_RESULTS)/runs
	$(PYTHON) scripts/aggregate.py --out $(CAPACITY_RESULTS) $(CAPACITY_RESULTS)/runs \
	  $(if $(filter wandb,$(LOGGER)),--wandb)

# 4. compressing one trained RPG model and its dense twin (docs/results/compress.md): quantized
# and pruned rings against the dense weights quantized and pruned; fine-tuning runs resume
COMPRESS_RPG ?= $(STUDY_DIR)/ablations/rpg=network,trainer.seed=1
COMPRESS_DENSE ?= $(STUDY_DIR)/dof/rpg=none,trainer.seed=1
compress: install
	$(PYTHON) scripts/compress.py --rpg '$(COMPRESS_RPG)' --dense '$(COMPRESS_DENSE)' \
	  --work runs/compress $(ARGS)

clean:
	rm -rf outputs multirun runs wandb
