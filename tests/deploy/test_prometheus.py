"""A real Prometheus (Debian's package, `make prometheus`) scraping a live `tickcast serve`
and a live `tickcast retrain --every` on the session's Kafka broker, with the repository's
scrape configuration (targets and intervals rewritten for the test) and alert rules.

Checks the key series through Prometheus' HTTP query API, the rules as Prometheus loaded
them (and four of them active on live conditions: a refused model, dead letters, and the
live-quality alerts on a deliberately miscalibrated model: its interval a tenth as wide and
its point forecast biased; their `for` shortened to seconds here, promtool's unit tests in
deploy/prometheus/alerts.test.yml hold the 15 minutes), and the
Grafana dashboard: every metric name its queries use is one the processes export, and every
query runs in Prometheus and returns series carrying the labels its legend names.

One serve, one retrain job and one Prometheus for the whole module."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streamer.jobs import replay
from streamer.kafka import announcements as models
from streamer.kafka.local import LocalBroker, free_port
from streamer.settings import Settings
from tests.streamer.harness import fresh_settings, produce_raw, serve_process, wait_serving

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tickcast.json"

N_SYMBOLS, N_TICKS, N_BAD = 20, 3000, 60  # 2% dead letters: above the 1% alert
SERVE_JOB, RETRAIN_JOB = "tickcast-serve", "tickcast-retrain"

pytestmark = pytest.mark.prometheus  # and kafka, through the `kafka` fixture
QUALITY_ALERTS = ("TickcastIntervalMiscalibrated", "TickcastErrorRatioHigh")
# Grafana's template variables, as a query with "All" instances would get them.
TEMPLATE = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "5m", "$instance": ".*"}
# Series that only exist after an event this module does not cause.
MAY_BE_EMPTY = {
    "tickcast_model_announced_rmse",  # set by a swap's announcement
    "tickcast_retrain_score",  # set by a run that trains (this one is skipped)
}


@dataclass
class Stack:
    settings: Settings
    serve_port: int
    retrain_port: int
    url: str  # Prometheus
    feed: FeedClient
    version: str  # the (miscalibrated) model serve runs

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body["status"] == "success", (expr, body)
        result = body["data"]["result"]
        assert isinstance(result, list)
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def wait(self, expr: str, cond: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
             ) -> list[dict[str, Any]]:  # fmt: skip
        t0 = time.monotonic()
        while True:
            result = self.query(expr)
            if cond(result):
                return result
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{expr}: {result} after {timeout} s")
            time.sleep(0.25)


class FeedClient(threading.Thread):
    """One websocket feed client subscribed to every symbol, which also sends one unknown
    op (an error reply); it reads until told to stop, then closes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.ws = connect(f"ws://127.0.0.1:{port}/ws")
        self.ws.send(json.dumps({"op": "subscribe", "symbols": "*"}))
        self.ws.send(json.dumps({"op": "bogus"}))
        self.types: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                msg = json.loads(self.ws.recv(timeout=0.2))
            except TimeoutError:
                continue
            except ConnectionClosed:
                return
            self.types[msg["type"]] = self.types.get(msg["type"], 0) + 1

    def close(self) -> None:
        self.done.set()
        self.join(10)
        self.ws.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def miscalibrated(out: Path) -> str:
    """The bundled stocks model with its interval a tenth as wide and its return mean moved
    by 0.05 (a biased point forecast), saved to `out`; returns its version."""
    from model import checkpoint

    pred = checkpoint.load(ROOT / "model/bundled/stocks")
    stats = dataclasses.replace(pred.stats, interval_scale=pred.stats.interval_scale * 0.1,
                                ret_mean=pred.stats.ret_mean + 0.05)  # fmt: skip
    return checkpoint.save(out, pred.model, stats, {"data": {"source": "miscalibrated"}})


def rules_for_test(tmp: Path) -> Path:
    """alerts.yml with the live-quality alerts' `for` shortened to 2 s (the test cannot wait
    15 minutes; promtool's unit tests check the 15)."""
    spec = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for g in spec["groups"]:
        for r in g["rules"]:
            if r["alert"] in QUALITY_ALERTS:
                assert r["for"] == "15m", r
                r["for"] = "2s"
    path = tmp / "alerts.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def prometheus_config(
    serve: str, retrain: str, self_addr: str, rules: Path | None = None
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the compose addresses replaced by the test's,
    1 s intervals and the rule files by absolute path (`rules` instead of alerts.yml)."""
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(rules if rules and f == "alerts.yml" else DEPLOY / "prometheus" / f)
                         for f in cfg["rule_files"]]  # fmt: skip
    addr = {"serve:9300": serve, "retrain:9301": retrain, "localhost:9090": self_addr}
    for job in cfg["scrape_configs"]:
        for sc in job["static_configs"]:
            sc["targets"] = [addr[t] for t in sc["targets"]]
    assert isinstance(cfg, dict)
    return cfg


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, f"{proc.args!r} exited: {log.read_text(errors='replace')}"
        try:
            get_text(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout} s")


@pytest.fixture(scope="module")
def stack(kafka: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not Path(PROMETHEUS).is_file():
        pytest.fail(f"no Prometheus at {PROMETHEUS}: run `make prometheus`", pytrace=False)
    tmp = tmp_path_factory.mktemp("prometheus")
    serve_port, retrain_port, prom_port = free_port(), free_port(), free_port()
    version = miscalibrated(tmp / "miscalibrated")
    settings = fresh_settings(kafka.bootstrap, metrics_port=serve_port, feed_port=free_port(),
                              registry=str(tmp / "registry"),
                              model=str(tmp / "miscalibrated"))  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    feed: FeedClient | None = None
    try:
        serve_log = tmp / "serve.log"
        procs.append(serve_process(settings, serve_log))
        # The retrain job as in docker-compose.yml: the loop with its metrics endpoint. Its
        # first run reads the last hour of ticks: none (the synthetic ticks are from 2023),
        # so it is skipped, quickly. Its own registry and no announcements: serve is left
        # alone.
        env = dict(os.environ, JAX_PLATFORMS="cpu", TICKCAST_KAFKA_BOOTSTRAP=kafka.bootstrap,
                   TICKCAST_TICKS_TOPIC=settings.ticks_topic, TICKCAST_MODELS_TOPIC="",
                   TICKCAST_REGISTRY=str(tmp / "retrain-registry"))  # fmt: skip
        retrain_log = tmp / "retrain.log"
        with open(retrain_log, "ab") as fh:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "streamer.cli", "retrain", "--since", "1h", "--every",
                 "1h", "--no-progress", "--metrics-port", str(retrain_port)],
                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        config = tmp / "prometheus.yml"
        addrs = (f"127.0.0.1:{p}" for p in (serve_port, retrain_port, prom_port))
        config.write_text(yaml.safe_dump(prometheus_config(*addrs, rules_for_test(tmp))))
        prom_log = tmp / "prometheus.log"
        with open(prom_log, "ab") as fh:
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdout=fh, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        url = f"http://127.0.0.1:{prom_port}"
        wait_http(f"{url}/-/ready", procs[-1], prom_log)
        wait_serving(serve_log)
        feed = FeedClient(settings.feed_port)
        feed.start()
        s = Stack(settings, serve_port, retrain_port, url, feed, version)
        wait_http(f"http://127.0.0.1:{retrain_port}/metrics", procs[1], retrain_log, 120)
        # Prometheus has seen serve before any tick or refusal: counters start from 0.
        s.wait(f'tickcast_model_refused_total{{job="{SERVE_JOB}",reason="missing"}}',
               lambda r: len(r) == 1)  # fmt: skip
        # An announced version that is not in the registry: serve refuses it.
        asyncio.run(models.announce(kafka.bootstrap, settings.models_topic,
                                    {"version": "19700101T000000Z-00000000"}))  # fmt: skip
        # Ticks over a few seconds, so several scrapes see the counters move; and some
        # malformed ones.
        ticks = replay.synthetic(N_SYMBOLS, N_TICKS, seed=3)
        asyncio.run(replay.publish(kafka.bootstrap, settings.ticks_topic, ticks, rate=1000,
                                   progress=False))  # fmt: skip
        bad = [(f"BAD{i % 7}".encode(), b"{not json", None) for i in range(N_BAD)]
        asyncio.run(produce_raw(settings, bad))
        s.wait(f'tickcast_ticks_consumed_total{{job="{SERVE_JOB}"}}',
               lambda r: len(r) == 1 and float(r[0]["value"][1]) == N_TICKS + N_BAD)  # fmt: skip
        s.wait(f'tickcast_retrain_runs_total{{job="{RETRAIN_JOB}",outcome="skipped"}}',
               lambda r: len(r) == 1 and float(r[0]["value"][1]) == 1, timeout=120)  # fmt: skip
        yield s
    finally:
        if feed is not None:
            feed.close()
        for p in reversed(procs):  # Prometheus, retrain, serve: each by its own PID
            stop(p)


# ---------------------------------------------------------------- the key series
def test_targets_are_up(stack: Stack) -> None:
    for job in (SERVE_JOB, RETRAIN_JOB, "prometheus"):
        assert stack.value(f'up{{job="{job}"}}') == 1, job
    targets = get_json(f"{stack.url}/api/v1/targets")["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        SERVE_JOB: "up", RETRAIN_JOB: "up", "prometheus": "up"}  # fmt: skip


def test_throughput_and_counts(stack: Stack) -> None:
    sel = f'{{job="{SERVE_JOB}"}}'
    assert stack.value(f"rate(tickcast_ticks_consumed_total{sel}[5m])") > 0
    assert stack.value(f"rate(tickcast_forecasts_published_total{sel}[5m])") > 0
    # One forecast per good tick; the malformed ones went to the dead-letter topic.
    assert stack.value(f"tickcast_forecasts_published_total{sel}") == N_TICKS
    assert stack.value(f"tickcast_ticks_consumed_total{sel}") == N_TICKS + N_BAD
    assert stack.value(f'tickcast_ticks_rejected_total{{job="{SERVE_JOB}",reason="bad_json"}}') \
        == N_BAD  # fmt: skip
    assert stack.value(f"sum(tickcast_ticks_rejected_total{sel})") == N_BAD
    assert stack.value(f"tickcast_active_symbols{sel}") == N_SYMBOLS


def test_lag_latency_and_error_series(stack: Stack) -> None:
    sel = f'{{job="{SERVE_JOB}"}}'
    lag = stack.query(f"tickcast_consumer_lag{sel}")
    assert sorted(r["metric"]["partition"] for r in lag) == ["0", "1", "2"]
    assert all(float(r["value"][1]) == 0 for r in lag), lag  # caught up
    for q in (0.5, 0.95, 0.99):
        p = stack.value(f"histogram_quantile({q}, sum by (le) "
                        f"(rate(tickcast_tick_to_forecast_seconds_bucket{sel}[5m])))")  # fmt: skip
        assert math.isfinite(p) and 0 < p < 5, (q, p)
    batches = stack.value(f"tickcast_batch_seconds_count{sel}")
    assert batches >= 1
    rmse = {r["metric"]["forecaster"]: float(r["value"][1])
            for r in stack.query(f"tickcast_live_rmse{sel}")}  # fmt: skip
    assert set(rmse) == {"model", "persistence"}
    assert all(math.isfinite(v) and v > 0 for v in rmse.values()), rmse


def test_feed_series(stack: Stack) -> None:
    sel = f'{{job="{SERVE_JOB}"}}'
    # Deliveries trail the forecasts by a frame interval (feed_frame_rate): wait for one.
    stack.wait(f"tickcast_feed_deliveries_total{sel} > 0", lambda r: len(r) == 1)
    assert stack.value(f"tickcast_feed_connections{sel}") == 1
    assert stack.value(f"tickcast_feed_subscriptions{sel}") == 1  # "*" counts once
    delivered = stack.value(f"tickcast_feed_deliveries_total{sel}")
    assert 0 < delivered <= N_TICKS
    assert stack.value(f'tickcast_feed_errors_total{{job="{SERVE_JOB}",code="unknown_op"}}') == 1
    sent = {r["metric"]["type"]: float(r["value"][1])
            for r in stack.query(f"tickcast_feed_messages_sent_total{sel}")}  # fmt: skip
    assert sent["update"] > 0 and sent["hello"] == 1, sent
    assert stack.feed.types.get("update", 0) > 0 and stack.feed.types.get("error") == 1
    assert stack.value(f'tickcast_feed_closed_total{{job="{SERVE_JOB}",reason="slow"}}') == 0


def test_model_info(stack: Stack) -> None:
    info = stack.query(f'tickcast_model_info{{job="{SERVE_JOB}"}}')
    assert len(info) == 1 and info[0]["value"][1] == "1"
    assert info[0]["metric"]["version"] == stack.version  # the refused version did not swap
    assert stack.value(f'tickcast_model_swaps_total{{job="{SERVE_JOB}"}}') == 0


def test_retrain_series(stack: Stack) -> None:
    result = stack.query(f'tickcast_retrain_runs_total{{job="{RETRAIN_JOB}"}}')
    runs = {r["metric"]["outcome"]: float(r["value"][1]) for r in result}
    assert runs == {"promoted": 0, "rejected": 0, "skipped": 1, "failed": 0}
    age = stack.value(f'time() - tickcast_retrain_last_success_timestamp{{job="{RETRAIN_JOB}"}}')
    assert 0 <= age < 300


# ---------------------------------------------------------------- the alert rules
def test_alert_rules_load_and_evaluate(stack: Stack) -> None:
    """Prometheus loaded every rule of alerts.yml, each evaluates without error; the live
    conditions this module made are active and nothing else is firing."""
    spec = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    want = {g["name"]: [r["alert"] for r in g["rules"]] for g in spec["groups"]}
    t0 = time.monotonic()
    while True:
        groups = get_json(f"{stack.url}/api/v1/rules")["data"]["groups"]
        got = {g["name"]: [r["name"] for r in g["rules"]] for g in groups}
        assert got == want
        rules = [r for g in groups for r in g["rules"]]
        if all(not r["lastEvaluation"].startswith("0001") for r in rules):
            break
        assert time.monotonic() - t0 < 30, "rules not evaluated in 30 s"
        time.sleep(0.5)
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r
    # The refused announcement fires at once (no `for`); dead letters at 2% are pending
    # (their `for` is 10 minutes); the miscalibrated model's interval and error fire (their
    # `for` shortened to 2 s here).
    firing = {"TickcastModelRefused", *QUALITY_ALERTS}
    active = stack.wait(
        "ALERTS",
        lambda res: (
            {"TickcastDeadLetters"} <= {a["metric"]["alertname"] for a in res}
            and firing <= {a["metric"]["alertname"] for a in res
                           if a["metric"]["alertstate"] == "firing"}
        ),
        timeout=60,
    )  # fmt: skip
    state = {a["metric"]["alertname"]: a["metric"]["alertstate"] for a in active}
    refused = [a["metric"] for a in active if a["metric"]["alertname"] == "TickcastModelRefused"]
    assert refused[0]["reason"] == "missing" and state["TickcastModelRefused"] == "firing"
    assert state["TickcastDeadLetters"] in ("pending", "firing")
    for name in QUALITY_ALERTS:
        (alert,) = [a["metric"] for a in active if a["metric"]["alertname"] == name]
        assert alert["version"] == stack.version and alert["alertstate"] == "firing", alert
    # What fired them, through Prometheus: the live gauges of the serving version.
    sel = f'{{job="{SERVE_JOB}",version="{stack.version}"}}'
    assert stack.value(f"tickcast_live_coverage{sel}") < 0.5
    assert stack.value(f"tickcast_live_error_ratio{sel}") > 1.05
    assert stack.value(f"tickcast_quality_forecasts_total{sel}") >= 100
    quiet = {"TickcastTargetDown", "TickcastForecastsStalled", "TickcastPartitionMismatch",
             "TickcastRetrainFailed", "TickcastRetrainStale", "TickcastFeedFull"}  # fmt: skip
    assert not quiet & set(state), state


# ---------------------------------------------------------------- the Grafana dashboard
def dashboard_targets() -> list[dict[str, Any]]:
    dash = json.loads(DASHBOARD.read_text())
    targets = [t for p in dash["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 20
    return targets


def substitute(expr: str) -> str:
    for var, value in TEMPLATE.items():
        expr = expr.replace("${" + var[1:] + "}", value).replace(var, value)
    assert "$" not in expr, f"unknown template variable in {expr}"
    return expr


METRIC = re.compile(r"\b(tickcast_[a-zA-Z0-9_:]*)")


def referenced_names(expr: str) -> set[str]:
    """The tickcast metric names an expression selects (label values in quotes dropped)."""
    return set(METRIC.findall(re.sub(r'"[^"]*"', '""', expr)))


def exported_names(exposition: str) -> set[str]:
    """The sample names a /metrics text makes in Prometheus, families without samples (a
    labelled metric before its first child) included: a counter `x` is `x_total`, a
    histogram `x_bucket`/`x_sum`/`x_count`, an info `x_info`, a gauge `x`."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",), "gauge": ("",), "summary": ("", "_sum", "_count"),
                "unknown": ("",)}  # fmt: skip
    names: set[str] = set()
    for fam in text_string_to_metric_families(exposition):
        names |= {s.name for s in fam.samples}
        names |= {fam.name + suffix for suffix in suffixes[fam.type]}
    return names


def test_dashboard_metric_names_are_exported(stack: Stack) -> None:
    """Every metric the dashboard queries is one a live serve or the retrain job exports
    (from their own /metrics, not through Prometheus)."""
    serve = get_text(f"http://127.0.0.1:{stack.serve_port}/metrics")
    retrain = get_text(f"http://127.0.0.1:{stack.retrain_port}/metrics")
    exported = exported_names(serve) | exported_names(retrain)
    assert "tickcast_ticks_consumed_total" in exported
    assert "tickcast_ticks_consumed" not in exported  # the name Prometheus never sees
    used: set[str] = set()
    for t in dashboard_targets():
        names = referenced_names(t["expr"])
        assert names, f"no tickcast metric in {t['expr']}"
        missing = names - exported
        assert not missing, f"{t['expr']}: {sorted(missing)} not exported"
        used |= names
    # The panels the issue asks for are there.
    for name in ("tickcast_ticks_consumed_total", "tickcast_forecasts_published_total",
                 "tickcast_consumer_lag", "tickcast_tick_to_forecast_seconds_bucket",
                 "tickcast_live_rmse", "tickcast_live_rmse_by_version", "tickcast_model_info",
                 "tickcast_model_swaps_total", "tickcast_model_refused_total",
                 "tickcast_feed_connections", "tickcast_feed_deliveries_total",
                 "tickcast_feed_conflated_total", "tickcast_feed_closed_total",
                 "tickcast_ticks_rejected_total", "tickcast_retrain_runs_total",
                 "tickcast_retrain_score", "tickcast_step_seconds_bucket",
                 "tickcast_live_error_ratio", "tickcast_live_coverage",
                 "tickcast_live_interval_score_ratio", "tickcast_quality_forecasts_total",
                 "tickcast_quality_covered_total", "tickcast_quality_sq_log_error_total",
                 "tickcast_quality_interval_score_total",
                 "tickcast_batch_seconds_bucket"):  # fmt: skip
        assert name in used, name


def test_dashboard_queries_run_in_prometheus(stack: Stack) -> None:
    """Each query, its template variables substituted, succeeds in Prometheus and returns
    series with every label its legend names."""
    empty = []
    for t in dashboard_targets():
        expr = substitute(t["expr"])
        result = stack.query(expr)
        if not result:
            empty.append(expr)
            continue
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
            assert all(label in r["metric"] for r in result), (expr, label, result[:2])
    unexpected = [e for e in empty if not referenced_names(e) <= MAY_BE_EMPTY]
    assert not unexpected, unexpected
    # The instance variable's query (label_values(tickcast_ticks_consumed_total, instance)).
    dash = json.loads(DASHBOARD.read_text())
    (var,) = dash["templating"]["list"]
    metric = re.fullmatch(r"label_values\((\w+), instance\)", var["definition"])
    assert metric is not None
    series = get_json(f"{stack.url}/api/v1/series?match[]={metric.group(1)}")["data"]
    assert [s["instance"] for s in series] == [f"127.0.0.1:{stack.serve_port}"]
