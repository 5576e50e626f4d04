"""The Dockerfile: lint-clean, copies only what exists and is in the build context,
runs as a non-root user, and its start command serves from a clean environment
with the serving dependencies only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.harness.launcher import free_port, running, start_process

from ..onnx_factory import write_linear_model
from .dockerfile import Stage, dockerignore_excludes, parse_dockerfile

APP_DIR = "/app"  # the runtime stage's WORKDIR; mapped into tmp_path when run here


@pytest.fixture(scope="module")
def stages(repo: Path) -> list[Stage]:
    return parse_dockerfile(repo / "Dockerfile")


def test_hadolint_finds_nothing(repo: Path, hadolint_binary: Path) -> None:
    result = subprocess.run(
        [str(hadolint_binary), "Dockerfile"], cwd=repo, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path, hadolint_binary: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install flask\nMAINTAINER nobody\n")
    result = subprocess.run([str(hadolint_binary), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the `latest` tag


def test_every_copy_source_exists_and_is_in_the_build_context(
    repo: Path, stages: list[Stage]
) -> None:
    sources = [source for stage in stages for source in stage.copy_sources()]
    assert {"pyproject.toml", "README.md", "service", "models"} <= set(sources)
    for source in sources:
        assert (repo / source).exists(), f"COPY source {source} is not in the repository"
        assert not dockerignore_excludes(repo / ".dockerignore", source), (
            f"COPY source {source} is excluded by .dockerignore"
        )


@pytest.mark.parametrize(
    "path",
    [
        ".venv",
        ".git",
        "tests",
        "data",
        "docs",
        ".env",
        "service/__pycache__/x.pyc",
        "service/defense/_kernel.cpython-311-x86_64-linux-gnu.so",
        "service/defense/_keyed.cpython-311-x86_64-linux-gnu.so",
        "service/protocol/_rows.cpython-311-x86_64-linux-gnu.so",
    ],
)
def test_dockerignore_keeps_the_context_small(repo: Path, path: str) -> None:
    assert dockerignore_excludes(repo / ".dockerignore", path)


def test_dockerignore_matcher_understands_exceptions(tmp_path: Path) -> None:
    ignore = tmp_path / ".dockerignore"
    ignore.write_text("docs\n!docs/keep.md\n**/*.npz\n")
    assert dockerignore_excludes(ignore, "docs/other.md")
    assert not dockerignore_excludes(ignore, "docs/keep.md")
    assert dockerignore_excludes(ignore, "models/a/w.npz")
    assert not dockerignore_excludes(ignore, "models/a/model.onnx")


def test_runtime_stage_is_slim_non_root_and_serves_on_8000(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "multi-stage build expected"
    runtime = stages[-1]
    base = runtime.all("FROM")[0].arguments.split()[0]
    assert base in ("python:3.11-slim", "${PYTHON_IMAGE}")
    user = runtime.all("USER")[-1].arguments.split(":")[0]
    assert user not in ("root", "0")
    assert [i.arguments for i in runtime.all("EXPOSE")] == ["8000 8002"]  # inference, metrics
    env = runtime.env()
    assert env["DYNANOISE_HOST"] == "0.0.0.0"
    assert env["DYNANOISE_PORT"] == "8000"
    assert int(env["DYNANOISE_WORKERS"]) >= 2
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith(APP_DIR + "/")
    assert runtime.exec_form("CMD") == ["dynanoise", "serve"]
    assert "/v2/health/ready" in " ".join(runtime.exec_form("HEALTHCHECK"))
    installs = " ".join(i.arguments for s in stages for i in s.all("RUN"))
    assert "pip install" in installs and "[audit" not in installs


def _repo_has_models(repo: Path) -> bool:
    return any((repo / "models").glob("*/manifest.json"))


def _in_container_paths(value: str, root: Path) -> str:
    """Map the image's /app paths (in an ENV value) to the same layout under root."""
    return value.replace(APP_DIR + "/", f"{root}{APP_DIR}/")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_start_command_serves_from_a_clean_venv_without_torch(
    repo: Path, stages: list[Stage], tmp_path: Path
) -> None:
    """Mimic the image: the build stage's COPY sources, `pip install .` into a venv
    without system site-packages, then the runtime stage's ENV and CMD."""
    build, runtime = stages[0], stages[-1]
    context = tmp_path / "src"
    for source in build.copy_sources():
        target = context / source
        if (repo / source).is_dir():
            shutil.copytree(
                repo / source,
                target,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"),
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / source, target)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "torch must not be a serving dependency"
    no_sklearn = subprocess.run([str(python), "-c", "import sklearn"], capture_output=True)
    assert no_sklearn.returncode != 0, "scikit-learn must not be a serving dependency"
    # -I: the installed package, not a source tree on the path.
    kernel = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "from service.defense._compiled import keyed, kernel; from service.protocol import v1;"
            " print(kernel, keyed, v1._rows)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "_kernel" in kernel.stdout, "the C kernel was not built: " + kernel.stderr
    assert "_keyed" in kernel.stdout, "the keyed seeds were not built: " + kernel.stderr
    assert "_rows" in kernel.stdout, "the v1 body parser was not built: " + kernel.stderr

    # The runtime stage's filesystem: WORKDIR /app with models/, data/, metrics/.
    app = tmp_path / APP_DIR.strip("/")
    (app / "data").mkdir(parents=True)
    (app / "metrics").mkdir()
    if _repo_has_models(repo):
        shutil.copytree(repo / "models", app / "models")
    else:
        write_linear_model(app / "models", name="toy", n_features=4, n_classes=3)

    port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DYNANOISE_", "PROMETHEUS_"))},
        **{k: _in_container_paths(v, tmp_path) for k, v in runtime.env().items()},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "DYNANOISE_HOST": "127.0.0.1",  # the image binds 0.0.0.0; tests stay on loopback
        "DYNANOISE_PORT": str(port),
        "DYNANOISE_METRICS_PORT": str(metrics_port),
    }
    command = runtime.exec_form("CMD")
    healthcheck = runtime.exec_form("HEALTHCHECK")
    assert healthcheck[0] == "python"
    healthcheck[0] = str(python)

    # Its own session: uvicorn's workers get the signals with it.
    server = start_process(
        [str(venv / "bin" / command[0]), *command[1:]],
        env=env,
        workdir=app,
        port=port,
        timeout=90,
        new_session=True,
    )
    with running(server, stop_timeout=20.0, strict=False):
        probe = subprocess.run(healthcheck, env=env, capture_output=True, timeout=30)
        assert probe.returncode == 0, probe.stderr

        # The image creates the demo tenant on an empty store; its key lands in data/.
        key = (app / "data" / "demo_api_key").read_text().strip()
        model = json.loads(next((app / "models").glob("*/manifest.json")).read_text())
        row = [0.0] * int(model["input"]["shape"][-1])
        answer = httpx.post(
            f"{server.url}/v1/models/{model['name']}/predict",
            json={"instances": [row]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        # Two workers write to the multiprocess directory; the metrics listener (its
        # own port; none on the public one) aggregates them.
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert f'model="{model["name"]}"' in metrics and "dynanoise_requests_total" in metrics
        assert any(Path(env["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"))
    down = subprocess.run(healthcheck, env=env, capture_output=True, timeout=30)
    assert down.returncode != 0, "the healthcheck must fail when nothing answers"
