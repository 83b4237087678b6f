.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

# Never let uv fetch its own Python: the stack runs on the system's python3 (3.11).
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON_PREFERENCE := only-system
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-z][a-z_-]*:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(CURDIR)/.tools/bin/uv:
	python3 deploy/native/install-uv

.PHONY: install
install: $(UV) ## Install the locked Python dependencies into .venv (uv itself too, if missing)
	$(UV) sync --frozen

.PHONY: deps
deps: ## Install the Debian packages the stack and its tests need, when missing
	deploy/native/install-deps postgres nginx prometheus

.PHONY: test
test: install deps ## Run the whole test suite against a real PostgreSQL
	$(RUN) pytest

.PHONY: lint
lint: install ## Check formatting, lint (ruff) and types (mypy --strict)
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) mypy service migrations tests loadtest deploy gunicorn.conf.py

.PHONY: format
format: install ## Format the code and apply safe lint fixes
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

STACK := $(RUN) python -m deploy.native
WORKERS ?=

.PHONY: up
up: install ## Start the stack (Compose if a Docker engine answers, else native) and wait for /readyz
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then \
		docker compose up --detach --wait && \
		echo "stack: ready at http://127.0.0.1:$${HTTP_PORT:-8080}/api/v1/notes"; \
	else \
		$(STACK) up; \
	fi

.PHONY: down
down: ## Stop everything `make up` started and free every port
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then \
		docker compose down; \
	else \
		$(STACK) down; \
	fi

.PHONY: status
status: ## Show each component, its pid and the live worker pids
	$(STACK) status

.PHONY: logs
logs: ## Follow the logs (.run/logs/)
	$(STACK) logs

.PHONY: reload
reload: ## Reload code and config with zero failed requests (USR2, wait for new workers, TERM old)
	$(STACK) reload

.PHONY: scale
scale: ## Change the worker count live: make scale WORKERS=N (after the connection budget check)
	@test -n "$(WORKERS)" || { echo "usage: make scale WORKERS=N" >&2; exit 2; }
	$(STACK) scale $(WORKERS)

USERS ?= 50
SPAWN_RATE ?= 50
RUN_TIME ?= 30
MAX_FAILURE_RATIO ?= 0.01
MAX_P95_MS ?= 250
MAX_P99_MS ?= 500
WARMUP ?= 5

.PHONY: loadtest
loadtest: install ## Locust headless against the running stack: make loadtest USERS=50 RUN_TIME=30 MAX_P99_MS=500
	$(RUN) python -m loadtest.run --users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(RUN_TIME) \
		--max-failure-ratio $(MAX_FAILURE_RATIO) --max-p95-ms $(MAX_P95_MS) --max-p99-ms $(MAX_P99_MS)

.PHONY: sweep
sweep: install ## The same load at several worker counts and a recommendation: make sweep WORKERS="1 2 4"
	$(RUN) python -m loadtest.sweep --workers "$(WORKERS)" --users $(USERS) --run-time $(RUN_TIME) \
		--warmup $(WARMUP) --max-p99-ms $(MAX_P99_MS) --max-failure-ratio $(MAX_FAILURE_RATIO)

.PHONY: migrate
migrate: install ## Upgrade the database (DATABASE_URL) to head, under an advisory lock
	$(RUN) alembic upgrade head

.PHONY: dev
dev: install ## Run one uvicorn process with auto-reload on 127.0.0.1:8000 (development)
	$(RUN) uvicorn --factory service.main:create_app --reload --host 127.0.0.1 --port 8000

.PHONY: all
all: lint test ## Everything CI runs: lint, then the tests
