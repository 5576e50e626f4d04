"""docker-compose.yml and what it mounts: the Compose v2 binary validates the file;
nginx, Prometheus and Grafana agree with the service on names, ports, limits and
metric names; secrets come only from the environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import ServiceMetrics
from service.settings import Settings

from .nginxconf import Directive, NginxSyntaxError, find
from .nginxconf import parse as parse_nginx

SECRETS = ("DYNANOISE_ADMIN_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
SERVICE = "dynanoise"  # the compose service of the inference server


def _compose(
    binary: Path, compose_file: Path, env_file: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    # Nothing from this shell may fill the ${VAR:?} holes: only the env file.
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [str(binary), "-f", str(compose_file), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config(repo: Path, compose_binary: Path) -> dict[str, Any]:
    """The compose file as Compose resolves it (interpolated, normalised)."""
    result = _compose(
        compose_binary,
        repo / "docker-compose.yml",
        repo / ".env.example",
        "config",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = json.loads(result.stdout)
    return resolved


def test_compose_config_accepts_the_file(repo: Path, compose_binary: Path) -> None:
    result = _compose(
        compose_binary, repo / "docker-compose.yml", repo / ".env.example", "config", "-q"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        ("    image: postgres:16-alpine\n", "    image: postgres:16-alpine\n    replicas: [\n"),
        ("  postgres:\n", "  postgres:\n    no_such_key: 1\n"),
        ("condition: service_healthy", "condition: when_it_feels_like_it"),
    ],
    ids=["yaml-syntax", "unknown-key", "bad-condition"],
)
def test_compose_config_rejects_a_broken_copy(
    repo: Path, compose_binary: Path, tmp_path: Path, breakage: tuple[str, str]
) -> None:
    original, broken = breakage
    text = (repo / "docker-compose.yml").read_text()
    assert original in text
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace(original, broken, 1))
    result = _compose(compose_binary, copy, repo / ".env.example", "config", "-q")
    assert result.returncode != 0


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_run_without_each_secret(
    repo: Path, compose_binary: Path, tmp_path: Path, missing: str
) -> None:
    env_file = tmp_path / "partial.env"
    env_file.write_text("".join(f"{name}=x\n" for name in SECRETS if name != missing))
    result = _compose(compose_binary, repo / "docker-compose.yml", env_file, "config", "-q")
    assert result.returncode != 0
    assert missing in result.stderr


def test_secrets_come_from_the_env_file_only(repo: Path) -> None:
    text = (repo / "docker-compose.yml").read_text()
    example = (repo / ".env.example").read_text()
    for name in SECRETS:
        assert "${" + name + ":?" in text, f"{name} must be required with ${{{name}:?...}}"
        assert re.search(rf"^{name}=\S+", example, re.MULTILINE), f"{name} not in .env.example"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=repo, capture_output=True, check=False
    )
    assert ignored.returncode == 0, ".env must be git-ignored"


def test_service_runs_replicas_on_postgres(config: dict[str, Any]) -> None:
    service = config["services"][SERVICE]
    assert service["deploy"]["replicas"] >= 2
    assert "ports" not in service, "replicas are reached through nginx, not published"
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = service["environment"]
    assert env["DYNANOISE_DATABASE_URL"] == (
        "postgresql+psycopg://dynanoise:replace-with-a-long-random-password@postgres:5432/dynanoise"
    )
    assert env["DYNANOISE_HOST"] == "0.0.0.0"
    assert int(env["DYNANOISE_WORKERS"]) >= 2  # `serve` prepares the multiprocess dir
    tmpfs_targets = [entry.split(":")[0] for entry in service.get("tmpfs", [])]
    assert any(env["PROMETHEUS_MULTIPROC_DIR"].startswith(t + "/") for t in tmpfs_targets)


def test_the_metrics_port_is_for_prometheus_only(repo: Path, config: dict[str, Any]) -> None:
    """Its own port, on the compose network only: not published to the host, not
    proxied by nginx, and the one Prometheus scrapes."""
    service = config["services"][SERVICE]
    env = service["environment"]
    metrics_port = env["DYNANOISE_METRICS_PORT"]
    assert metrics_port != env["DYNANOISE_PORT"] and int(metrics_port) > 0
    assert "DYNANOISE_METRICS_HOST" not in env  # the listener binds DYNANOISE_HOST, 0.0.0.0
    assert metrics_port in [str(p) for p in service["expose"]]
    assert "ports" not in service
    published = {str(p["target"]) for s in config["services"].values() for p in s.get("ports", [])}
    assert metrics_port not in published
    nginx_text = (repo / "deploy/nginx/nginx.conf").read_text()
    assert f":{metrics_port}" not in nginx_text
    jobs = {job["job_name"]: job for job in _prometheus(repo)["scrape_configs"]}
    (dns,) = jobs[SERVICE]["dns_sd_configs"]
    assert str(dns["port"]) == metrics_port


def test_service_environment_names_are_real_settings(config: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    names = [n for n in config["services"][SERVICE]["environment"] if n.startswith("DYNANOISE_")]
    assert names
    unknown = [n for n in names if n.removeprefix("DYNANOISE_").lower() not in fields]
    assert not unknown, f"not Settings fields (typo?): {unknown}"


def test_postgres_is_16_with_a_named_volume_and_pg_isready(config: dict[str, Any]) -> None:
    postgres = config["services"]["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    data = [v for v in postgres["volumes"] if v["target"] == "/var/lib/postgresql/data"]
    assert data and data[0]["type"] == "volume" and data[0]["source"] in config["volumes"]


def test_bind_mounts_exist_in_the_repository(repo: Path, config: dict[str, Any]) -> None:
    binds = [
        v for s in config["services"].values() for v in s.get("volumes", []) if v["type"] == "bind"
    ]
    assert len(binds) >= 4
    for volume in binds:
        source = Path(volume["source"])
        assert source.exists(), f"bind mount source {source} does not exist"
        assert source.resolve().is_relative_to(repo.resolve())


def _mount_target(config: dict[str, Any], service: str, repo: Path, relative: str) -> str:
    for volume in config["services"][service].get("volumes", []):
        if volume["type"] == "bind" and Path(volume["source"]) == repo / relative:
            target: str = volume["target"]
            return target
    raise AssertionError(f"{relative} is not mounted into {service}")


# --- nginx ------------------------------------------------------------------------


def _nginx(repo: Path) -> list[Directive]:
    return parse_nginx((repo / "deploy/nginx/nginx.conf").read_text())


def _size_bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    assert match, f"not an nginx size: {size}"
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


@pytest.mark.parametrize(
    "text",
    [
        "http { server { listen 80 } }",
        "http { server { listen 80; }",
        "http { log_format main '$status; }",
        "events { }\n}",
    ],
    ids=["missing-semicolon", "unclosed-block", "unterminated-quote", "stray-brace"],
)
def test_nginx_parser_rejects_what_nginx_rejects(text: str) -> None:
    with pytest.raises(NginxSyntaxError):
        parse_nginx(text)


def test_nginx_balances_over_the_service_replicas(repo: Path, config: dict[str, Any]) -> None:
    conf = _nginx(repo)
    assert _mount_target(config, "nginx", repo, "deploy/nginx/nginx.conf") == (
        "/etc/nginx/nginx.conf"
    )
    (http,) = find(conf, "http")
    # `server ... resolve` in an upstream needs nginx 1.27.3+ (Debian stable has
    # 1.22): the service name goes through a variable, resolved per request.
    assert not http.find("upstream")
    (resolver,) = http.find("resolver")
    assert resolver.args[0] == "127.0.0.11"
    port = config["services"][SERVICE]["environment"]["DYNANOISE_PORT"]
    (replicas,) = [d for d in http.find("set") if d.args[0] == "$dynanoise_replicas"]
    assert replicas.args[1] == f"{SERVICE}:{port}"
    passes = {tuple(d.args) for d in http.find("proxy_pass")}
    assert passes == {("http://$dynanoise_replicas",)}
    headers = [d.args for d in http.find("proxy_set_header")]
    assert ["Authorization", "$http_authorization"] in headers
    published = config["services"]["nginx"]["ports"][0]
    assert [str(published["target"])] in [d.args for d in http.find("listen")]


def test_nginx_retries_only_inference_after_sending(repo: Path) -> None:
    """Inference POSTs change no state: retried on another replica even after they
    were sent; the admin API's POST/PATCH/DELETE never are."""
    (http,) = find(_nginx(repo), "http")
    retries = {
        tuple(location.args): next(d.args for d in location.find("proxy_next_upstream"))
        for location in http.find("location")
        if location.find("proxy_pass")
    }
    assert "non_idempotent" in retries[("~", "^/v[12]/")]
    assert "non_idempotent" not in retries[("/",)]


def test_nginx_body_limit_matches_the_service(repo: Path, config: dict[str, Any]) -> None:
    (limit,) = find(_nginx(repo), "client_max_body_size")
    service_limit = int(config["services"][SERVICE]["environment"]["DYNANOISE_MAX_BODY_BYTES"])
    assert _size_bytes(limit.args[0]) == service_limit


# --- Prometheus -------------------------------------------------------------------


def _prometheus(repo: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((repo / "deploy/prometheus/prometheus.yml").read_text())
    return loaded


def test_prometheus_scrapes_every_replica(repo: Path, config: dict[str, Any]) -> None:
    assert _mount_target(config, "prometheus", repo, "deploy/prometheus/prometheus.yml") == (
        "/etc/prometheus/prometheus.yml"
    )
    jobs = {job["job_name"]: job for job in _prometheus(repo)["scrape_configs"]}
    job = jobs[SERVICE]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "static_configs" not in job, "a static target would hit one replica at a time"
    (dns,) = job["dns_sd_configs"]
    assert SERVICE in dns["names"] and dns["type"] == "A"
    # The metrics listener's port: the inference port answers /metrics with 404.
    env = config["services"][SERVICE]["environment"]
    assert str(dns["port"]) == env["DYNANOISE_METRICS_PORT"] != env["DYNANOISE_PORT"]


# --- Grafana ----------------------------------------------------------------------


def _dashboard(repo: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (repo / "deploy/grafana/dashboards/dynanoise.json").read_text()
    )
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p["type"] != "row"]


def _exposed_series() -> set[str]:
    """Every series name the service can expose, from its own instrument registry."""
    names: set[str] = set()
    for family in ServiceMetrics().registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def test_grafana_provisions_the_prometheus_data_source(repo: Path, config: dict[str, Any]) -> None:
    assert _mount_target(config, "grafana", repo, "deploy/grafana/provisioning") == (
        "/etc/grafana/provisioning"
    )
    sources = yaml.safe_load(
        (repo / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    (source,) = sources
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in config["services"]
    used = {
        p["datasource"]["uid"]
        for p in _panels(_dashboard(repo))
        if isinstance(p.get("datasource"), dict)
    }
    assert used == {source["uid"]}


def test_grafana_loads_dashboards_from_the_mounted_folder(
    repo: Path, config: dict[str, Any]
) -> None:
    providers = yaml.safe_load(
        (repo / "deploy/grafana/provisioning/dashboards/dynanoise.yml").read_text()
    )["providers"]
    target = _mount_target(config, "grafana", repo, "deploy/grafana/dashboards")
    assert [p["options"]["path"] for p in providers] == [target]
    home = config["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{target}/dynanoise.json"


def test_dashboard_queries_use_only_metrics_the_service_exposes(repo: Path) -> None:
    exposed = _exposed_series()
    exprs = [t["expr"] for p in _panels(_dashboard(repo)) for t in p.get("targets", [])]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\bdynanoise_[a-z_]+\b", expr)}
    assert used, "no dynanoise_ metric in the dashboard"
    assert used <= exposed, f"unknown metrics: {sorted(used - exposed)}"
    jobs = {job["job_name"] for job in _prometheus(repo)["scrape_configs"]}
    for job in re.findall(r'job="([^"]+)"', " ".join(exprs)):
        assert job in jobs


def test_dashboard_has_the_panels_operators_need(repo: Path) -> None:
    panels = _panels(_dashboard(repo))

    def exprs(panel: dict[str, Any]) -> str:
        return " ".join(t["expr"] for t in panel.get("targets", []))

    def has(predicate: Any) -> bool:
        return any(predicate(p, exprs(p)) for p in panels)

    assert has(lambda p, e: "rate(dynanoise_requests_total" in e and "tenant, model" in e)
    assert has(
        lambda p, e: (
            "histogram_quantile(0.95" in e
            and "dynanoise_request_duration_seconds_bucket" in e
            and re.search(r"by \(le, tenant, model\)", e)
        )
    )
    assert has(lambda p, e: p["type"] == "heatmap" and "dynanoise_sensitivity_bucket" in e)
    assert has(lambda p, e: "dynanoise_noise_std" in e)
    assert has(lambda p, e: "dynanoise_label_flips_total" in e)
    assert has(lambda p, e: "by (code)" in e and 'code=~"4..|5.."' in e)
    variables = {v["name"] for v in _dashboard(repo)["templating"]["list"]}
    assert {"tenant", "model"} <= variables
