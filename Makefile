# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The CPU demo: synthetic videos of time-reversed class pairs, the tiny random ViT with
# ST-Adapters, then eval and predict on one MP4, one WebM and one AVI of the val split.
DEMO_DATA := data/synthetic
DEMO_RUN := runs/demo
STADAPT := $(BIN)/stadapt
DEMO_PREPARE ?=  # extra `prepare synthetic` options, e.g. make demo DEMO_PREPARE="--videos-per-class 32"

demo: $(STAMP)
	@echo "== 1/4  stadapt prepare synthetic: render and index the videos"
	$(STADAPT) prepare synthetic $(DEMO_DATA)/videos --out $(DEMO_DATA) $(DEMO_PREPARE)
	@echo "== 2/4  stadapt train: ST-Adapters on the frozen tiny ViT ($(DEMO_RUN) is replaced)"
	rm -rf $(DEMO_RUN)
	$(STADAPT) train recipes/demo.yaml --out $(DEMO_RUN)
	@echo "== 3/4  stadapt eval"
	$(STADAPT) eval $(DEMO_RUN)
	@echo "== 4/4  stadapt predict: an MP4, a WebM and an AVI of three different val classes"
	$(STADAPT) predict --model $(DEMO_RUN) --top-k 3 $$(awk -F, 'NR > 1 { n = split($$1, p, "."); \
	    if (!(p[n] in ext) && !($$2 in cls)) { ext[p[n]]; cls[$$2]; print "$(DEMO_DATA)/videos/" $$1 } }' \
	    $(DEMO_DATA)/val.csv)

clean:
	rm -rf $(VENV) data/synthetic runs
