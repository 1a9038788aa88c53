# Two commands a new user needs: `make demo` and `make test`. Both create .venv with the machine's python3
# and (re)install the project into it when pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean install ladder

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/moelab demo

# The lab's reference ladder (docs/ladder.md): trains what data/ladder lacks (committed runs count as finished;
# resumable, at low priority), then writes its report. Hours on two cores: run it over several sittings.
ladder: $(STAMP)
	nice $(BIN)/moelab sweep run sweeps/ladder.yaml --results data/ladder --no-live
	nice $(BIN)/moelab sweep run sweeps/ladder_seed1.yaml --results data/ladder --no-live
	nice $(BIN)/moelab sweep run sweeps/ladder_isoflop.yaml --results data/ladder --no-live
	nice $(BIN)/moelab sweep run sweeps/ladder_top.yaml --results data/ladder --no-live
	nice $(BIN)/moelab sweep run sweeps/ladder_top_seed1.yaml --results data/ladder --no-live
	$(BIN)/moelab report data/ladder/ladder

# pytest's last lines include `moelab skips: N (M allowed)` (tests/conftest.py); with CI=true an unallowed skip fails.
test: $(STAMP)
	$(BIN)/ruff check moelab analysis tests
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check moelab analysis tests
	$(BIN)/lint-imports --no-cache  # the architecture contract (.importlinter); tests/test_architecture.py runs it too

bench: $(STAMP)
	$(BIN)/moelab bench step

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
