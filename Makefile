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
	deploy/native/install-deps postgres

.PHONY: test
test: install deps ## Run the whole test suite against a real PostgreSQL
	$(RUN) pytest

.PHONY: lint
lint: install ## Check formatting, lint (ruff) and types (mypy --strict)
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) mypy service migrations tests loadtest

.PHONY: format
format: install ## Format the code and apply safe lint fixes
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

.PHONY: migrate
migrate: install ## Upgrade the database (DATABASE_URL) to head, under an advisory lock
	$(RUN) alembic upgrade head

.PHONY: dev
dev: install ## Run one uvicorn process with auto-reload on 127.0.0.1:8000 (development)
	$(RUN) uvicorn service.main:app --reload --host 127.0.0.1 --port 8000

.PHONY: all
all: lint test ## Everything CI runs: lint, then the tests
