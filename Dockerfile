# The service image: gunicorn with uvicorn workers, the same gunicorn.conf.py as native mode.
# Also runs the one-shot migration (`python -m service.stack.migrate`) in docker-compose.yml.
# The app is the notes service, or another project of the build context: `--build-arg
# APP_PATH=examples/inventory`, then APP (and MIGRATIONS) at run time (docs/your-app.md).
# Built by the Dockerfile frontend built into Docker 20.10 and later (RUN --mount included):
# no `# syntax=` line, whose frontend image a machine without a registry cannot pull.

# Build and runtime must share one base: the venv's python is a symlink into it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Where uv comes from: its official image, or one made locally (`make image` offline).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# --- build: resolve the locked dependencies into /app/.venv -----------------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
# Compile once here (the runtime never writes bytecode); copy, since the cache is a mount;
# never let uv fetch a Python other than the base image's.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system
WORKDIR /app
# Only the lock: this layer is rebuilt when dependencies change, not when the code does.
COPY pyproject.toml uv.lock ./
# A machine whose egress goes through a proxy with its own CA passes its trust store as the
# build secret `ca-certificates`; it never reaches a layer.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=secret,id=ca-certificates \
    if [ -f /run/secrets/ca-certificates ]; then \
        export SSL_CERT_FILE=/run/secrets/ca-certificates; \
    fi; \
    uv sync --frozen --no-dev --no-install-project

# --- the app: another project's directory (APP_PATH) and its requirements, pinned around the
# stack's locked ones as `make up` pins them (deploy/native/app_deps.py); for the notes
# service (APP_PATH=.) nothing: its code is the stack's own.
FROM build AS app
ARG APP_PATH=.
COPY ${APP_PATH}/ /srv/context/${APP_PATH}/
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=secret,id=ca-certificates \
    set -eu; \
    if [ -f /run/secrets/ca-certificates ]; then \
        export SSL_CERT_FILE=/run/secrets/ca-certificates; \
    fi; \
    project="/srv/context/${APP_PATH}"; \
    if [ "${APP_PATH}" = "." ]; then \
        find /srv/context -mindepth 1 -delete; \
    else \
        for wanted in requirements.txt pyproject.toml; do \
            if [ -f "$project/$wanted" ]; then \
                uv pip freeze --python /app/.venv/bin/python > /tmp/installed.txt; \
                grep '==' /tmp/installed.txt > /tmp/stack-pins.txt; \
                uv pip install --python /app/.venv/bin/python \
                    -r "$project/$wanted" -c /tmp/stack-pins.txt; \
                break; \
            fi; \
        done; \
    fi

# --- runtime: the venv and the code, no uv, no build tools, not root --------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0700 /tmp/run

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENVIRONMENT=production \
    GUNICORN_BIND=0.0.0.0:8000 \
    RUN_DIR=/tmp/run

WORKDIR /app
# Owned by root: the service cannot change its own code or dependencies.
COPY --from=app /app/.venv /app/.venv
COPY alembic.ini gunicorn.conf.py ./
COPY migrations/ ./migrations/
COPY service/ ./service/
# Another app's project at the same relative path as in the repository, so that APP_PATH and
# MIGRATIONS (relative to /app, the working directory) name it in both modes.
COPY --from=app /srv/context/ ./

USER 10001:10001
EXPOSE 8000

# Liveness only (no database call), on the port gunicorn binds; slim has no curl, Python's
# urllib does the same.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['GUNICORN_BIND'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"]

# Exec form: gunicorn is PID 1 and gets SIGTERM itself, so a stop drains the workers.
CMD ["gunicorn", "--config", "gunicorn.conf.py"]
