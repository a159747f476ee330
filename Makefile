# Two entry points for a fresh machine with Python 3.11+:
#   make demo   sets up .venv and runs the 2x2 demo grid on the embedded default, with the monitor
#   make test   sets up .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch 2.13.0 (on a GPU box, set TORCH_SPEC to the build you want, or leave it).
TORCH_SPEC ?= torch==2.13.0
BIN = $(VENV)/bin

.PHONY: demo test golden mutation venv clean-runs sample-runs check-light slurm-deps bench browser-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[train,dev]"

demo: venv
	$(BIN)/prefwatch launch examples/tiny-grid.toml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: venv
	$(BIN)/ruff check prefwatch tests bench
	$(BIN)/ruff format --check prefwatch tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --cov --cov-report=term

# Regenerate the monitor's golden screens (tests/__snapshots__/test_golden/*.svg) after a deliberate
# visual change; open the SVGs in a browser, look at them, and commit them with the change.
golden: venv
	$(BIN)/python -m pytest tests/test_golden.py --snapshot-update -q

# Mutation score of the core, module by module against its fast unit tests (mutmut; not in CI).
mutation: venv
	$(BIN)/python scripts/mutation.py

# Every benchmark (bench/), one table: figure, floor measured in the same run, ratio, goal (about 15 minutes;
# data under the system temp dir; run it on a quiet machine: the load is printed with the table).
bench: venv
	$(BIN)/python bench/run_all.py

# The Slurm tests (tests/test_slurm.py) start a one-node cluster on this machine from Debian's packages;
# installed here when missing (as root, with apt-get; the package index is refreshed only if needed).
SLURM_PACKAGES = slurmd slurmctld slurm-client munge
slurm-deps:
	@if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then \
	  echo "slurm-deps: $$(slurmctld -V) present"; \
	elif [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y --no-install-recommends $(SLURM_PACKAGES) \
	  || { apt-get update && apt-get install -y --no-install-recommends $(SLURM_PACKAGES); }; \
	else \
	  echo "slurm-deps: the Slurm tests need $(SLURM_PACKAGES) (Debian packages); install them as root" >&2; exit 1; \
	fi

# The HTML report's test (tests/test_report_html.py) renders it in a real headless Chromium, Debian's package.
browser-deps:
	@if command -v chromium >/dev/null; then \
	  echo "browser-deps: $$(chromium --version 2>/dev/null) present"; \
	elif [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y --no-install-recommends chromium \
	  || { apt-get update && apt-get install -y --no-install-recommends chromium; }; \
	else \
	  echo "browser-deps: the HTML report test needs chromium (a Debian package); install it as root" >&2; exit 1; \
	fi

# The monitor-only install (no torch): attach, replay and report must work from it.
check-light:
	rm -rf .venv-light && $(PYTHON) -m venv .venv-light
	.venv-light/bin/python -m pip install --quiet .
	.venv-light/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'trl', 'transformers')))"
	.venv-light/bin/prefwatch report sample_runs/tiny-demo --format md > /dev/null; status=$$?; [ $$status -eq 0 ] || [ $$status -eq 3 ]
	rm -rf .venv-light

clean-runs:
	rm -rf runs/

# Regenerate sample_runs/tiny-demo with the real launcher (checkpoints left out: the logs are the sample;
# the machine's paths in its records made neutral).
sample-runs: venv
	tmp=$$(mktemp -d) && $(BIN)/prefwatch launch examples/tiny-grid.toml --headless --out $$tmp \
	  && rm -rf $$tmp/tiny-demo/cells/*/checkpoints && rm -rf sample_runs/tiny-demo \
	  && $(BIN)/python scripts/neutral_paths.py $$tmp/tiny-demo $$tmp \
	  && mkdir -p sample_runs && mv $$tmp/tiny-demo sample_runs/ && rm -rf $$tmp
