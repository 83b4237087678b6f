.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

# uv's own settings (the system's Python, never a downloaded one) live in pyproject.toml.
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
# Debian's own interpreter when it is there, rather than the first on PATH: the serving
# processes run as an unprivileged user (deploy/native/accounts.py), who must be able to run
# it, and one under a private home (pyenv's in /root) they cannot.
export UV_PYTHON := $(or $(UV_PYTHON),$(wildcard /usr/bin/python3.11))
RUN := $(UV) run --frozen
# For recipes of targets that depend on install, which has just synced .venv: a plain `uv run`
# would check it again and recompile every module's bytecode (half a second or more).
RUN_SYNCED := $(UV) run --frozen --no-sync

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-z][a-z_-]*:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 deploy/native/install-uv

.PHONY: install
install: $(UV) ## Install the locked Python dependencies into .venv (uv itself too, if missing)
	@command -v python3.11 >/dev/null || python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
		|| { echo "make: the stack runs on Python 3.11 (Debian 12: apt-get install python3), found $$(python3 --version 2>&1 || echo none)" >&2; exit 2; }
	$(UV) sync --frozen

.PHONY: deps
deps: ## Install the Debian packages the stack and its tests need, when missing
	deploy/native/install-deps postgres nginx prometheus wrk

# make test's pytest processes (pytest-xdist), each with the tests of whole files (their
# stacks are per file): most of a stack test is waiting on processes, so two share a small
# machine well (4 min 49 s against 8 min 30 s on two cores). Each process starts stacks of its
# own; more than the machine's cores would crowd its CPUs and PostgreSQL's connections.
TEST_PROCESSES ?= 2

.PHONY: test
test: install deps ## Run the whole test suite against a real PostgreSQL (the container tier aside) [TEST_PROCESSES=2]
	$(RUN_SYNCED) pytest -m "not containers" -n $(TEST_PROCESSES) --dist loadfile

.PHONY: test-containers
test-containers: install deps ## The tests of the built image and of Compose with the local stand-ins, with the real Docker engine (started as root when none runs)
	$(RUN_SYNCED) pytest -m containers

.PHONY: image
image: install ## Build the service image with the real engine, offline from a local base where no registry answers [APP_PATH=dir]
	$(RUN) python -m deploy.image $(if $(APP_PATH),--app-path $(APP_PATH))

.PHONY: audit
audit: install ## Known vulnerabilities in uv.lock (pip-audit --strict: what the service cannot answer for fails too), then the container and manifest checks [AUDIT_SERVICE=pypi|osv]
	$(RUN_SYNCED) python -m deploy.audit $(if $(AUDIT_SERVICE),--service $(AUDIT_SERVICE))

.PHONY: test-fast
test-fast: install ## The tests that need no database and no server, in seconds
	$(RUN_SYNCED) pytest -m "not database and not stack and not containers" -n $(TEST_PROCESSES) --dist loadfile

.PHONY: lint
lint: install ## Check formatting, lint (ruff), types (mypy --strict) and the migrations (squawk)
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) mypy service migrations tests loadtest deploy gunicorn.conf.py
	$(RUN_SYNCED) python -m deploy.lint_migrations $(PROJECT_MIGRATIONS)

# The notes' migrations and the example app's: `make lint` checks both.
PROJECT_MIGRATIONS := alembic.ini examples/inventory/alembic.ini
.PHONY: lint-migrations
lint-migrations: install ## squawk on each Alembic revision's upgrade SQL (alembic upgrade --sql), rules in .squawk.toml [MIGRATIONS=path/alembic.ini]
	$(RUN_SYNCED) python -m deploy.lint_migrations $(or $(MIGRATIONS),$(PROJECT_MIGRATIONS))

.PHONY: format
format: install ## Format the code and apply safe lint fixes
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

STACK := $(RUN) python -m deploy.native
WORKERS ?=
# ENGINE=native (the default): the topology as local processes. ENGINE=docker: the same in
# containers, with Docker Compose (deploy/compose/cli.py): v2's `docker compose` if present,
# else Debian's docker-compose 1.29, and it says which. A running engine alone never switches
# modes: it may be one that cannot pull the images (docs/operations.md).
ENGINE ?= native
ifeq ($(filter native docker,$(ENGINE)),)
$(error ENGINE must be native or docker, not '$(ENGINE)')
endif
# POOLER=pgbouncer: PgBouncer (transaction mode) between the workers and PostgreSQL.
# STANDINS=local: local images of PostgreSQL and nginx where no registry answers
# (deploy/compose/standins.yml). SERVICES="nginx": only these and what they depend on.
COMPOSE = $(RUN) python -m deploy.compose.cli $(if $(filter pgbouncer,$(POOLER)),--pooler pgbouncer) $(if $(filter local,$(STANDINS)),--standins)
define refuse_in_compose
	@echo 'make $(1): refused with Docker Compose: $(2)' >&2; exit 2
endef

.PHONY: up
up: install ## Start the stack (native processes; ENGINE=docker: Docker Compose) and wait for /readyz [POOLER=pgbouncer] [APP=... APP_PATH=... MIGRATIONS=...] [ENGINE=docker STANDINS=local SERVICES=...]
ifeq ($(ENGINE),docker)
	$(COMPOSE) up $(SERVICES)
else
	$(STACK) up
endif

.PHONY: down
down: ## Stop everything `make up` started and free every port
ifeq ($(ENGINE),docker)
	$(COMPOSE) down
else
	$(STACK) down
endif

.PHONY: status
status: ## Show each component, its pid and the live worker pids
ifeq ($(ENGINE),docker)
	$(COMPOSE) ps
else
	$(STACK) status
endif

.PHONY: logs
logs: ## Follow the logs (.run/logs/, or the containers')
ifeq ($(ENGINE),docker)
	$(COMPOSE) logs
else
	$(STACK) logs
endif

.PHONY: seed
seed: install ## Add ROWS notes to the running stack's database, a million per statement, with progress: make seed ROWS=10000000
	$(STACK) seed $(or $(ROWS),$(error make seed needs ROWS=N))

.PHONY: rotate-logs
rotate-logs: ## Rotate every log under .run/logs/ now; the rotator `make up` starts does it by size [LOG_ROTATE_SIZE=100M LOG_KEEP=5]
	$(STACK) rotate-logs

.PHONY: reload
reload: ## Reload code and config with zero failed requests (USR2, wait for new workers, TERM old)
ifeq ($(ENGINE),docker)
	$(call refuse_in_compose,reload,gunicorn is PID 1 there; rebuild and replace the container: make up ENGINE=docker)
else
	$(STACK) reload
endif

.PHONY: release
release: install ## Release new code with a schema change: migrate (each statement under MIGRATION_LOCK_TIMEOUT, retried), then reload, then report; the running code keeps serving if the migrations cannot get their locks
ifeq ($(ENGINE),docker)
	$(call refuse_in_compose,release,make up ENGINE=docker runs the migrate service before it replaces the app containers)
else
	$(STACK) release
endif

.PHONY: scale
scale: ## Change the worker count live: make scale WORKERS=N (after the connection budget check)
	@test -n "$(WORKERS)" || { echo "usage: make scale WORKERS=N" >&2; exit 2; }
ifeq ($(ENGINE),docker)
	$(call refuse_in_compose,scale,a container runs WEB_CONCURRENCY workers; set it in .env and run: docker compose up --detach app)
else
	$(STACK) scale $(WORKERS)
endif

.PHONY: dashboard
dashboard: install ## Regenerate the Grafana dashboard JSON from deploy/grafana/dashboard.py, then check it [STACK_NAME=name: its own file, title and uid]
	$(RUN) python -m deploy.grafana.dashboard $(if $(STACK_NAME),--name $(STACK_NAME))
	$(RUN) python -m deploy.grafana.dashboard --check $(if $(STACK_NAME),--name $(STACK_NAME))

.PHONY: settings-docs
settings-docs: install ## Regenerate docs/settings.md and .env.example from every settings declaration, then check them
	$(RUN) python -m deploy.settings_docs
	$(RUN) python -m deploy.settings_docs --check

# Load-test knobs are passed on only when set: their defaults live in pyproject.toml's
# [tool.locust] (users, spawn rate, run time) and in loadtest/thresholds.py (the thresholds).
flag = $(if $($(1)),$(2) $($(1)))
LOAD_FLAGS = $(call flag,USERS,--users) $(call flag,SPAWN_RATE,--spawn-rate) \
	$(call flag,RUN_TIME,--run-time) $(call flag,MAX_FAILURE_RATIO,--max-failure-ratio) \
	$(call flag,MAX_P99_MS,--max-p99-ms) $(call flag,LOCUST_PROCESSES,--processes)

.PHONY: loadtest
loadtest: install ## Locust headless against the running stack: make loadtest USERS=50 RUN_TIME=30 MAX_P99_MS=500 [LOCUSTFILE=path]
	$(RUN) python -m loadtest.run $(LOAD_FLAGS) $(call flag,MAX_P95_MS,--max-p95-ms)

# The scaling lab's gate (loadtest/sweep_gate.py): CHECK=1, or bounds of its own in
# MIN_SCALING="2:1.8 4:3.2" (N workers at least X times one), make the sweep exit 1 when the
# capped workers scale below them. Quoted: the bounds are one argument.
GATE_FLAGS = $(if $(filter-out 0 no false,$(CHECK)),--check) \
	$(if $(MIN_SCALING),--min-scaling "$(MIN_SCALING)")

.PHONY: sweep
sweep: install ## Load at several worker counts, a recommendation and a capacity plan: make sweep WORKERS="1 2 4" [CPU_PER_WORKER=0.2] [PLAN_CORES=16] [CHECK=1]
	$(RUN) python -m loadtest.sweep --workers "$(WORKERS)" $(LOAD_FLAGS) $(call flag,WARMUP,--warmup) \
		$(call flag,CPU_PER_WORKER,--cpu-per-worker) $(call flag,PLAN_CORES,--plan-cores) \
		$(call flag,ROUNDS,--rounds) $(GATE_FLAGS)

# The settings the gate's bounds were measured with (docs/performance.md, "The lab's gate").
.PHONY: bench-scaling
bench-scaling: install ## The scaling lab's gate on the running stack: 1 2 4 8 workers at 0.15 CPU, 5 rounds; exit 1 below MIN_SCALING (2:1.8 4:3.2)
	$(RUN) python -m loadtest.sweep --workers "1 2 4 8" --cpu-per-worker 0.15 --rounds 5 \
		--run-time 10 --warmup 4 --processes 2 --check $(GATE_FLAGS)

# The benchmarks `make bench` runs, in order (loadtest/bench/<name>.py): BENCH=stack runs one.
BENCH ?= endpoints instructions stack observer log_line statements datasize
.PHONY: bench
bench: install ## Side-by-side benchmarks, every ratio printed: the service against hand-written FastAPI and Starlette, the stack against uvicorn --workers N, every endpoint at 10k/1M/10M notes [BENCH=stack] [BENCH_FLAGS="--rounds 9"]
	deploy/native/install-deps wrk pgbouncer valgrind
	$(foreach name,$(BENCH),$(RUN) python -m loadtest.bench.$(name) $(BENCH_FLAGS) &&) true

.PHONY: migrate
migrate: install ## Run the app's migrations (MIGRATIONS) to head as the database's owner (the running stack's, else DATABASE_URL), under the stack's advisory lock
	$(RUN) python -m deploy.native migrate

.PHONY: dev
dev: install ## Run one uvicorn process with auto-reload on 127.0.0.1:8000 (development), on the running stack's database as its app role
	$(RUN) python -m deploy.native dev

.PHONY: all
all: lint test ## Everything CI runs: lint, then the tests
