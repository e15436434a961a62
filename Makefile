# The two commands of the README: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean ablation

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) scripts/run.py $(ARGS)

# Fusion methods × 3 seeds (Hydra multirun), then one summary table (mean ± std over seeds).
ablation: $(STAMP)
	dir=outputs/multirun/ablation-$$(date +%Y%m%d-%H%M%S); \
	$(PY) scripts/run.py -m fusion.method=weighted,mean,logreg,mlp seed=1,2,3 trainer.progress=false \
		hydra.sweep.dir=$$dir $(ARGS) && $(PY) scripts/summarize_sweep.py $$dir

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun artifacts .pytest_cache
