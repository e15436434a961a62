# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# musicnn's pretrained weights, converted from its PyPI wheel once (acquire/musicnn_weights.py).
WEIGHTS := .cache/weights/musicnn/MSD_musicnn.pt

.PHONY: run test install clean ablation weights

install: $(STAMP) $(WEIGHTS)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

weights: $(WEIGHTS)

$(WEIGHTS): | $(STAMP)
	$(PY) -m acquire.musicnn_weights

# The main job: real pairs, 5 folds (conf/experiment/real_pairs.yaml). MAIN= runs the synthetic demo instead.
MAIN ?= experiment=real_pairs
run: $(STAMP) $(WEIGHTS)
	$(PY) scripts/run.py $(MAIN) $(ARGS)

# Fusion methods × 3 seeds (Hydra multirun), then one summary table (mean ± std over seeds), failed runs
# listed with why; the exit status is the sweep's.
ablation: $(STAMP) $(WEIGHTS)
	dir=outputs/multirun/ablation-$$(date +%Y%m%d-%H%M%S); \
	$(PY) scripts/run.py -m fusion.method=weighted,mean,logreg,mlp seed=1,2,3 trainer.progress=false \
		hydra.sweep.dir=$$dir $(ARGS); status=$$?; \
	$(PY) scripts/summarize_sweep.py $$dir && exit $$status

# The suite in TEST_WORKERS processes (pytest-xdist), each taking a whole test file so that a file's
# shared fixtures are built once, and one math thread each so that the workers do not oversubscribe
# the cores. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
test: $(STAMP) $(WEIGHTS)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun artifacts .pytest_cache
