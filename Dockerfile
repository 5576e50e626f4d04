# syntax=docker/dockerfile:1
# dynanoise serving image: the serving dependencies only (no torch, no audit extra),
# the shipped models baked in, a non-root user, `dynanoise serve` on port 8000.
#
#   docker build -t dynanoise:0.1.0 .
#   docker run --rm -p 8000:8000 -e DYNANOISE_ADMIN_TOKEN=... dynanoise:0.1.0
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its serving dependencies into a venv ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# gcc builds the C extensions (service/defense/_kernel.c, service/protocol/_rows.c,
# and service/defense/_keyed.c against OpenSSL's headers); only the compiled modules
# reach the runtime image, whose Python already carries libcrypto. Debian's stable packages, not pinned:
# security updates land on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The serving dependencies first, in a layer of their own: a change to the code
# rebuilds only the package below, not every dependency.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
# pyproject.toml names README.md as the package's long description.
COPY setup.py README.md ./
COPY service ./service
# `.` without extras: serving only; torch and scikit-learn stay in `.[audit]`.
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
    && python -I -c "from service.defense._compiled import keyed, kernel; from service.protocol import v1; assert kernel and keyed and v1._rows"

# --- runtime -----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="dynanoise" \
      org.opencontainers.image.description="ONNX inference behind the DynaNoise membership-inference defense" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid/gid, so Kubernetes' runAsUser and volume ownership can name it.
RUN groupadd --system --gid 10001 dynanoise \
    && useradd --system --uid 10001 --gid dynanoise --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin dynanoise

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=10001:10001 models ./models
# data/: the default SQLite store (single container). metrics/: Prometheus
# multiprocess files, one per uvicorn worker, in a subdirectory that `dynanoise
# serve` removes and recreates at start (so metrics/ may be a tmpfs or emptyDir).
RUN mkdir -p /app/data /app/metrics && chown 10001:10001 /app/data /app/metrics

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DYNANOISE_HOST=0.0.0.0 \
    DYNANOISE_PORT=8000 \
    DYNANOISE_WORKERS=2 \
    DYNANOISE_MODELS_DIR=/app/models \
    DYNANOISE_DATABASE_URL=sqlite:////app/data/dynanoise.db \
    PROMETHEUS_MULTIPROC_DIR=/app/metrics/prometheus

USER 10001:10001
EXPOSE 8000 8002

# slim has no curl: ask the readiness endpoint with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('DYNANOISE_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/v2/health/ready', timeout=4).status == 200 else 1)"]

CMD ["dynanoise", "serve"]
