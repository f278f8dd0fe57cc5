"""The deployment files, checked without Docker (no engine on the development machines):
docker-compose.yml's structure, the Dockerfiles, Grafana's provisioning and dashboard, and
Prometheus' configuration and alert rules through Debian's `promtool` (`make prometheus`).
tests/deploy/test_prometheus.py runs the same files in a real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(ROOT / "docker-compose.yml")
    assert isinstance(doc, dict)
    return doc


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"kafka", "serve", "replay", "retrain", "evaluate", "prometheus", "grafana"}
    assert expected <= set(services), sorted(expected - set(services))
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["evaluate"]["profiles"] == ["evaluate"]
    retrain = services["retrain"]["command"]
    assert retrain[0] == "retrain" and retrain[retrain.index("--every") + 1] == "30m"


def test_compose_publishes_on_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str), f"{name}: use the HOST:PORT:PORT string form"
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"
            published += 1
    assert published >= 5  # serve 9300 + 8765, retrain 9301, prometheus 9090, grafana 3000


def test_compose_metrics_listen_beyond_the_container(compose: dict[str, Any]) -> None:
    """Inside a container 127.0.0.1 is the container itself: Prometheus could not scrape."""
    services = compose["services"]
    assert services["serve"]["environment"]["TICKCAST_METRICS_HOST"] == "0.0.0.0"
    cmd = services["retrain"]["command"]
    assert cmd[cmd.index("--metrics-host") + 1] == "0.0.0.0"


def test_compose_mounts_and_volumes_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith("."):
                if source == "./out":  # the evaluation job's output, made on first run
                    continue
                assert (ROOT / source).exists(), f"{name} mounts {source}, not in the repo"
            else:
                assert source in named, f"{name} uses volume {source}, not declared"
        build = svc.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    # serve reads the registry that retrain writes
    serve_vols = compose["services"]["serve"]["volumes"]
    retrain_vols = compose["services"]["retrain"]["volumes"]
    assert "registry:/registry:ro" in serve_vols and "registry:/registry" in retrain_vols


def test_prometheus_scrapes_the_compose_services(compose: dict[str, Any]) -> None:
    cfg = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in cfg["scrape_configs"]
    }
    assert targets["tickcast-serve"] == ["serve:9300"]
    assert targets["tickcast-retrain"] == ["retrain:9301"]
    services = compose["services"]
    for host_port in (*targets["tickcast-serve"], *targets["tickcast-retrain"]):
        host, port = host_port.split(":")
        assert host in services
        assert any(p.endswith(f":{port}") for p in services[host]["ports"])
    # The config directory is mounted where the config and its rule files are read.
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    for rule_file in cfg["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


def test_grafana_provisioning_points_at_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus"
    assert ds[0]["url"] == "http://prometheus:9090"
    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/tickcast.yml")["providers"]
    folder = providers[0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == folder
    env = grafana["environment"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{folder}/tickcast.json"
    dash = json.loads((DEPLOY / "grafana/dashboards/tickcast.json").read_text())
    uids = {
        d["uid"]
        for p in dash["panels"]
        for d in [p.get("datasource"), *(t.get("datasource") for t in p.get("targets", []))]
        if d
    }
    assert uids == {ds[0]["uid"]}


def test_dashboard_layout() -> None:
    dash = json.loads((DEPLOY / "grafana/dashboards/tickcast.json").read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    titles = " ".join(p["title"] for p in panels).lower()
    for want in ("throughput", "lag", "latency", "rmse", "model", "feed", "dead letters",
                 "retrain"):  # fmt: skip
        assert want in titles, want


def test_dockerfiles() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(re.match(r"jax\[cuda13\]", d) for d in extras["cuda"])
    for name, install in (("Dockerfile", "pip install --no-cache-dir ."),
                          ("Dockerfile.cuda", "pip install '.[cuda]'")):  # fmt: skip
        text = (DEPLOY / name).read_text()
        assert install in text, name
        assert 'ENTRYPOINT ["tickcast"]' in text, name
        for line in text.splitlines():
            parts = line.split()
            if parts[:1] == ["COPY"]:
                for src in parts[1:-1]:
                    assert (ROOT / src).exists(), f"{name}: COPY {src}: not in the repo"
    assert (DEPLOY / "Dockerfile.cuda").read_text().startswith("#")
    assert re.search(r"^FROM nvidia/cuda:13\.", (DEPLOY / "Dockerfile.cuda").read_text(), re.M)


def promtool(*args: str) -> str:
    if not Path(PROMTOOL).is_file():
        pytest.fail(f"no promtool at {PROMTOOL}: run `make prometheus`", pytrace=False)
    run = subprocess.run([PROMTOOL, *args], cwd=DEPLOY / "prometheus", capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


@pytest.mark.prometheus
def test_promtool_checks_the_config_and_rules() -> None:
    n_rules = sum(len(g["rules"]) for g in load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"])
    out = promtool("check", "config", "prometheus.yml")
    assert f"SUCCESS: {n_rules} rules found" in out


@pytest.mark.prometheus
def test_promtool_unit_tests_of_the_alerts() -> None:
    """Every alert fires on the series that should fire it and stays quiet before."""
    tested = {
        t["alertname"]
        for case in load_yaml(DEPLOY / "prometheus/alerts.test.yml")["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    alerts = {r["alert"] for g in load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
              for r in g["rules"]}  # fmt: skip
    assert tested == alerts, sorted(alerts - tested)
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")
