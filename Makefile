# The two commands of the README. Each creates .venv/ when missing and is safe to run again: the
# install step reruns only when pyproject.toml or this file changes.
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := all,spark,xtuner,dev
export PYTHONPATH := $(CURDIR)

.PHONY: demo test bench

demo: $(VENV)/.installed
	$(PY) tools/demo.py

# The tests in parallel processes, one per core up to 4 (many of them start processes of their own).
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --maxprocesses=4

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

# Debian packages: a font with CJK glyphs (captions in the preview and the report), Java 17 (Spark,
# for img2dataset's pyspark distributor and its test), and a C compiler with Python's headers (the one
# compiled loop, src/datasets/sample/_planes.c). Installed when missing, as root (as CI runs); otherwise one
# line says what is missing.
$(VENV)/.system: Makefile
	@mkdir -p $(VENV)
	@missing=""; \
	dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing="$$missing fonts-wqy-microhei"; \
	command -v java >/dev/null 2>&1 || missing="$$missing default-jre-headless"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc"; \
	[ -f "$$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	  else \
	    echo "not installed (Debian packages, needed for CJK captions, the Spark test and the compiled pixel loop):$$missing"; \
	  fi; \
	fi
	@touch $@

# xtuner 0.2.0 pins bitsandbytes 0.45.0, which fails to import with this torch's triton, and
# diffusers imports bitsandbytes whenever it is installed. Nothing here uses it (xtuner's dataset code
# and diffusers' autoencoders import without it): it is removed after the install.
$(VENV)/.installed: pyproject.toml setup.py src/datasets/sample/_planes.c Makefile | $(VENV)/.system
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@$(PY) -c 'import src.datasets.sample._planes' 2>/dev/null || \
	  echo "the compiled pixel loop (src/datasets/sample/_planes.c) was not built (no C compiler or Python headers found): samples take numpy's way, 0.2-0.9 ms longer"
	$(PY) -m pip show -q bitsandbytes >/dev/null 2>&1 && $(PY) -m pip uninstall -q -y bitsandbytes || true
	@# yapf (imported by mmengine's config) writes its grammar cache on its first import: done here once,
	@# not by two test workers at once (one read the other's half-written cache: EOFError).
	$(PY) -c 'import yapf' 2>/dev/null || true
	touch $@
