# The README's commands. Everything lives in the virtual environment .venv at the repo root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
LIGHT_PLUGINS := -e plugins/runpod -e plugins/thunder -e plugins/modal -e plugins/espeak -e plugins/replicate -e plugins/worker
# torchaudio's PyPI wheels need the torch build they were made with: pin both.
TORCH := torch==2.11.0 torchaudio==2.11.0
# The worker image's pins constrain the test install, so the tests run what the image ships
# (tests/test_runpod_deploy.py checks that they agree).
WORKER_PINS := plugins/runpod/deploy/requirements.txt
MODAL_PINS := plugins/modal/web-pins.txt

.PHONY: demo test install-light install-all lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Core + the plugins that need no torch: enough for the draft voice and every cloud provider.
install-light: $(BIN)/python
	$(PIP) install --quiet -e . $(LIGHT_PLUGINS)

# Everything, with the test tools and the local CSM engine (torch, torchaudio, transformers).
install-all: $(BIN)/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -c $(WORKER_PINS) -c $(MODAL_PINS) -e '.[test,postgres,s3]' $(LIGHT_PLUGINS) -e plugins/local_csm -e examples/provider_acme -r tests/requirements.txt

# README command one: the example book (three chapters of Markdown) into an M4B with chapter
# marks, with whatever target is usable (on a fresh machine with no keys and no GPU that is the
# free eSpeak draft voice), saying which target made it and why, and where the files are.
demo: install-light
	$(BIN)/csm-offload book examples/lighthouse.md -o audiobook --format m4b

test: install-all
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
