"""The deployment files agree with the code and with SPEC §6.

Checks the Prometheus rules, the Grafana dashboard and its provisioning, the Dockerfile,
compose.dev.yaml and the JetStream setup script against the metric catalog
(tests/support/metrics_catalog.py), `jetsaga.cli`'s parser and `jetsaga.config`'s
variables. Nothing here touches the network; where Debian's `prometheus`/`promtool` are on
PATH, they are run on loopback against the real config files.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dockerfile
import promql_parser
import pytest
import yaml
from compose_spec import PyCompose
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from jetsaga import config
from jetsaga.cli import build_parser
from jetsaga.devstack.postgres import SETTINGS
from tests.support import metrics_catalog as catalog

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
GRAFANA_DIR = ROOT / "infra" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "saga-monitoring.json"
COMPOSE = ROOT / "compose.dev.yaml"
WORKERS = ("order", "payment", "inventory")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- PromQL: every expression of the dashboard and the rules --------------------------------

# Grafana's built-in variables, replaced by what they expand to for a 5 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "20s", "$__interval": "5s", "$__range": "30m"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _rules() -> list[dict[str, Any]]:
    return [
        rule for group in _yaml(PROMETHEUS_DIR / "rules.yml")["groups"] for rule in group["rules"]
    ]


def _expression_params() -> list[Any]:
    return [pytest.param(where, expr, id=where) for where, expr in _expressions()]


def _expressions() -> list[tuple[str, str]]:
    found = [
        (f"dashboard:{panel['title']}:{target['refId']}", target["expr"])
        for panel in _panels(_dashboard())
        for target in panel.get("targets", [])
    ]
    found += [
        (f"rules:{rule.get('record') or rule.get('alert')}", rule["expr"]) for rule in _rules()
    ]
    return found


def _grafana_expanded(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def _nodes(tree: promql_parser.Expr) -> list[promql_parser.Expr]:
    """Every node of the tree, depth first."""
    nodes: list[promql_parser.Expr] = []
    promql_parser.walk(tree, nodes.append)  # append returns None: walk on
    return nodes


def _selector_name(selector: promql_parser.VectorSelector) -> str | None:
    if selector.name:
        return selector.name
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return matcher.value
    return None


def _check_matcher(sample: str, matcher: promql_parser.Matcher, where: str) -> None:
    assert matcher.name in catalog.allowed_labels(sample), (
        f"{where}: {sample} has no label {matcher.name!r}"
    )
    metric = catalog.metric_for_sample(sample)
    allowed = catalog.SERVICES if matcher.name == "job" else None
    if metric is not None and matcher.name in metric.labels:
        allowed = metric.labels[matcher.name]
    if allowed is None or matcher.op in (
        promql_parser.MatchOp.NotEqual,
        promql_parser.MatchOp.NotRe,
    ):
        return
    # Regex matchers here are plain alternations (`order|payment`), so each branch is a value.
    values = matcher.value.split("|") if matcher.op == promql_parser.MatchOp.Re else [matcher.value]
    for value in values:
        assert value in allowed, f"{where}: {sample}{{{matcher.name}}} is never {value!r}"


@pytest.mark.parametrize(("where", "expr"), _expression_params())
def test_promql_parses_and_names_only_catalog_metrics(where: str, expr: str) -> None:
    tree = promql_parser.parse(_grafana_expanded(expr))
    nodes = _nodes(tree)
    selectors = [n for n in nodes if isinstance(n, promql_parser.VectorSelector)]
    assert selectors, f"{where}: no metric is queried"
    for selector in selectors:
        sample = _selector_name(selector)
        assert sample is not None, f"{where}: a selector without a metric name"
        known = catalog.metric_for_sample(sample) is not None
        assert known or sample in catalog.PROMETHEUS_SERIES, f"{where}: {sample} is no metric"
        for matcher in selector.matchers.matchers:
            if matcher.name != "__name__":
                _check_matcher(sample, matcher, where)
    # Grouping labels must be labels the aggregated series carry.
    for node in nodes:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            inner = [
                _selector_name(n)
                for n in _nodes(node.expr)
                if isinstance(n, promql_parser.VectorSelector)
            ]
            carried = set().union(*(catalog.allowed_labels(s or "") for s in inner))
            missing = set(node.modifier.labels) - carried
            assert not missing, f"{where}: grouping by {missing} that no series carries"


def test_histogram_quantiles_read_buckets_and_keep_le() -> None:
    for where, expr in _expressions():
        for node in _nodes(promql_parser.parse(_grafana_expanded(expr))):
            if not (
                isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile"
            ):
                continue
            inner = _nodes(node.args[1])
            names = [
                _selector_name(n) for n in inner if isinstance(n, promql_parser.VectorSelector)
            ]
            assert names and all(n and n.endswith("_bucket") for n in names), where
            for agg in (n for n in inner if isinstance(n, promql_parser.AggregateExpr)):
                assert agg.modifier is not None and "le" in agg.modifier.labels, where


# --- Prometheus rules -------------------------------------------------------------------------

EXPECTED_ALERTS = {
    "JetsagaServiceDown",
    "SagaSuccessRateLow",
    "SagaDeadLetters",
    "ConsumerBacklogGrowing",
    "SagaDurationP95High",
    "SagaStuck",
    "OutboxLagHigh",
}


def _rule(alert: str) -> dict[str, Any]:
    return next(rule for rule in _rules() if rule.get("alert") == alert)


def _threshold(expr: str) -> float:
    """The number a top-level comparison of `expr` compares against."""
    tree = promql_parser.parse(expr)
    while isinstance(tree, promql_parser.BinaryExpr) and not isinstance(
        tree.rhs, promql_parser.NumberLiteral
    ):
        tree = tree.lhs  # `a > N and b` -> `a > N`
    assert isinstance(tree, promql_parser.BinaryExpr), expr
    assert isinstance(tree.rhs, promql_parser.NumberLiteral), expr
    return tree.rhs.val


def test_rules_hold_the_alerts_that_matter_each_with_severity_and_summary() -> None:
    rules = _rules()
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert EXPECTED_ALERTS <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
    for rule in rules:
        if "record" in rule:
            assert re.fullmatch(r"jetsaga:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
    records = {rule["record"]: rule["expr"] for rule in rules if "record" in rule}
    assert "saga_ended_total" in records["jetsaga:saga_success_rate:ratio5m"]
    for q in ("p50", "p95", "p99"):
        assert "saga_duration_seconds_bucket" in records[f"jetsaga:saga_duration_seconds:{q}_5m"]


def test_alert_thresholds_follow_the_saga_timeout() -> None:
    timeout = config.Settings().saga_timeout_s
    assert _threshold(_rule("SagaDurationP95High")["expr"]) == timeout / 2
    assert _threshold(_rule("SagaStuck")["expr"]) > timeout
    assert "increase(messages_dead_lettered_total[5m])" in _rule("SagaDeadLetters")["expr"]
    assert _threshold(_rule("SagaDeadLetters")["expr"]) == 0


def test_prometheus_scrapes_each_worker_on_its_port_and_loads_the_rules() -> None:
    prom = _yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert prom["global"]["scrape_interval"] == "5s"
    assert [(PROMETHEUS_DIR / f).is_file() for f in prom["rule_files"]] == [True]
    settings = config.Settings()
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert set(jobs) == set(WORKERS)
    for service, job in jobs.items():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        expected = f"{service}:{settings.port_of(service)}"
        assert targets == [expected]
        assert catalog.PORTS[service] == settings.port_of(service)


promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH")


@promtool
def test_promtool_accepts_the_config_and_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def _expected_alert(alert: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    """An alert as promtool renders it; descriptions only interpolate `$labels`."""
    description = re.sub(
        r"\{\{ \$labels\.(\w+) \}\}",
        lambda m: labels[m.group(1)],
        _rule(alert)["annotations"]["description"],
    )
    return {
        "exp_labels": {"severity": _rule(alert)["labels"]["severity"], **labels},
        "exp_annotations": {"summary": summary, "description": description},
    }


def _promtool_tests() -> dict[str, Any]:
    order_a = {"job": "order", "instance": "a"}
    order_b = {"job": "order", "instance": "b"}
    buckets = [
        _series("saga_duration_seconds_bucket", {**order_a, "outcome": "completed", "le": le}, v)
        for le, v in (("60", "0x30"), ("150", "0x30"), ("300", "0+10x30"), ("+Inf", "0+10x30"))
    ]
    return {
        "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                # Two order workers: 5 + 1 completed and 6 compensated a minute -> 50 %.
                "interval": "1m",
                "input_series": [
                    _series("saga_ended_total", {**order_a, "outcome": "completed"}, "0+5x30"),
                    _series("saga_ended_total", {**order_b, "outcome": "completed"}, "0+1x30"),
                    _series("saga_ended_total", {**order_a, "outcome": "compensated"}, "0+6x30"),
                    _series(
                        "messages_dead_lettered_total",
                        {"job": "payment", "durable": "payment-service"},
                        "0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
                    ),
                    *buckets,
                ],
                "promql_expr_test": [
                    {
                        "expr": "jetsaga:saga_success_rate:ratio5m",
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": "jetsaga:saga_success_rate:ratio5m{}", "value": 0.5}
                        ],
                    }
                ],
                "alert_rule_test": [
                    {
                        "alertname": "SagaSuccessRateLow",
                        "eval_time": "25m",
                        "exp_alerts": [
                            _expected_alert(
                                "SagaSuccessRateLow",
                                {},
                                "Only 50% of sagas completed in the last 5 minutes",
                            )
                        ],
                    },
                    {
                        "alertname": "SagaDeadLetters",
                        "eval_time": "4m",
                        "exp_alerts": [
                            _expected_alert(
                                "SagaDeadLetters",
                                {"durable": "payment-service"},
                                "Dead letters from payment-service in the last 5 minutes",
                            )
                        ],
                    },
                    {"alertname": "SagaDeadLetters", "eval_time": "15m", "exp_alerts": []},
                    {
                        "alertname": "SagaDurationP95High",
                        "eval_time": "25m",
                        "exp_alerts": [
                            _expected_alert(
                                "SagaDurationP95High", {}, "Saga p95 duration is 4m 52s"
                            )
                        ],
                    },
                ],
            },
            {
                # Every saga completes: no alert, however many there are.
                "interval": "1m",
                "input_series": [
                    _series("saga_ended_total", {**order_a, "outcome": "completed"}, "0+50x30"),
                    _series("saga_ended_total", {**order_a, "outcome": "failed"}, "0x30"),
                ],
                "alert_rule_test": [
                    {"alertname": "SagaSuccessRateLow", "eval_time": "25m", "exp_alerts": []},
                ],
            },
        ],
    }


@promtool
def test_success_rate_rule_sums_workers_and_alerts_fire(tmp_path: Path) -> None:
    tests = tmp_path / "rules_test.yml"
    tests.write_text(yaml.safe_dump(_promtool_tests()), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana -------------------------------------------------------------------------------


def _datasource() -> dict[str, Any]:
    provisioned = _yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioned["datasources"]
    return datasource  # type: ignore[no-any-return]


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "saga-monitoring"
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["title"]
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    datasource = {"type": "prometheus", "uid": _datasource()["uid"]}
    for panel in panels:
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel["datasource"] == datasource, title
        assert panel["targets"], f"{title} has no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target.get("datasource", datasource) == datasource, title
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, title


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(_dashboard()):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_shows_every_metric_of_the_catalog() -> None:
    queried = set()
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            tree = promql_parser.parse(_grafana_expanded(target["expr"]))
            for node in _nodes(tree):
                if isinstance(node, promql_parser.VectorSelector):
                    metric = catalog.metric_for_sample(_selector_name(node) or "")
                    if metric is not None:
                        queried.add(metric.name)
    assert set(catalog.METRICS) - queried == set()


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards_folder() -> None:
    datasource = _datasource()
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = _yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "jetsaga.yml")["providers"]
    assert provider["type"] == "file"
    grafana = _compose()["services"]["grafana"]
    mounts = dict(_bind_mounts(grafana))
    assert mounts[provider["options"]["path"]] == GRAFANA_DIR / "dashboards"
    assert _compose()["services"]["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]


def test_compose_postgres_runs_with_the_embedded_servers_settings() -> None:
    command = _compose()["services"]["postgres"]["command"]
    flags = {value for flag, value in itertools.pairwise(command) if flag == "-c"}
    defaults = {"fsync": "on", "synchronous_commit": "on"}  # spelled out for the embedded one
    assert command[0] == "postgres"
    assert flags == {f"{k}={v}" for k, v in SETTINGS.items() if defaults.get(k) != v}


# --- Live: Prometheus evaluates every expression against a scrape of catalog metrics -------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _catalog_registry() -> CollectorRegistry:
    """A registry exposing every catalog metric with every label value, as the services do."""
    registry = CollectorRegistry()
    for metric in catalog.METRICS.values():
        labels = list(metric.labels)
        if metric.kind == "counter":
            assert metric.name.endswith("_total"), metric.name
            made: Any = Counter(metric.name, metric.description, labels, registry=registry)
        elif metric.kind == "gauge":
            made = Gauge(metric.name, metric.description, labels, registry=registry)
        else:
            made = Histogram(metric.name, metric.description, labels, registry=registry)
        combos: list[dict[str, str]] = [{}]
        for label, values in metric.labels.items():
            combos = [{**combo, label: value} for combo in combos for value in values]
        for combo in combos:
            child = made.labels(**combo) if combo else made
            if metric.kind == "counter":
                child.inc(3)
            elif metric.kind == "gauge":
                child.set(1)
            else:
                child.observe(0.2)
    return registry


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)  # polling interval of a condition, not a wait for time to pass


def _query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:
        body = json.load(error)
        error.close()
    return body


@pytest.fixture(scope="module")
def prometheus_with_catalog() -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not on PATH")
    exporter_port, web_port = _free_port(), _free_port()
    server, thread = start_http_server(exporter_port, "127.0.0.1", _catalog_registry())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "order",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{web_port}"
        assert proc.stderr is not None
        # Keep draining stderr once ready, so prometheus never blocks on a full pipe.
        drain = threading.Thread(target=proc.stderr.read, daemon=True)
        try:
            for line in proc.stderr:
                if "Server is ready to receive web requests" in line:
                    break
            else:
                raise AssertionError("prometheus exited before it was ready")
            drain.start()

            def scraped_twice() -> bool:
                result = _query(base, 'count_over_time(up{job="order"}[1m]) >= 2')
                return bool(result.get("data", {}).get("result"))

            _wait_until(scraped_twice, 30, "two scrapes of the catalog exporter")
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if drain.is_alive():
                drain.join(timeout=5)
            proc.stderr.close()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def test_prometheus_evaluates_every_expression_without_error(
    prometheus_with_catalog: str,
) -> None:
    failures = []
    for where, expr in _expressions():
        body = _query(prometheus_with_catalog, _grafana_expanded(expr))
        if body.get("status") != "success":
            failures.append(f"{where}: {body.get('error')}")
        elif where.startswith("dashboard:") and not body["data"]["result"]:
            # Every series of the catalog exists here, so an empty panel is a broken query.
            failures.append(f"{where}: no data")
    assert failures == []


def test_prometheus_loads_every_rule_healthy(prometheus_with_catalog: str) -> None:
    def evaluated() -> bool:
        with urllib.request.urlopen(f"{prometheus_with_catalog}/api/v1/rules", timeout=5) as r:
            groups = json.load(r)["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # A rule not yet evaluated reports a lastEvaluation in year 0001.
        return (
            len(rules) == len(_rules())
            and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules)
            and all(rule["health"] == "ok" for rule in rules)
        )

    _wait_until(evaluated, 30, "every rule evaluated and healthy")


# --- compose.dev.yaml -----------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(COMPOSE)
    return data


def _jetsaga_services() -> dict[str, dict[str, Any]]:
    """The services that run the project's own image."""
    services = _compose()["services"]
    return {name: svc for name, svc in services.items() if "build" in svc}


def _bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, Path]]:
    """(container path, repository path) of each bind mount of a service."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield target, (COMPOSE.parent / source).resolve()


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), "commands are written in exec form"
    return command


def _port(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None, url
    return port


def test_compose_validates_with_compose_spec() -> None:
    compose = PyCompose.from_yaml(COMPOSE.read_text(encoding="utf-8"))
    compose.validate()
    assert set(compose.service_names()) == {
        "nats",
        "setup",
        "postgres",
        "localstripe",
        "prometheus",
        "grafana",
        *WORKERS,
    }


def test_compose_validates_against_the_compose_specification_schema() -> None:
    # check-jsonschema ships the Compose specification's schema, so this runs offline.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_references_only_what_exists() -> None:
    compose = _compose()
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        if "build" in service:
            context = COMPOSE.parent / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()
            assert service["image"] == "jetsaga:dev"


def test_compose_runs_only_existing_commands() -> None:
    parser = build_parser()
    localstripe_scripts = [
        ep
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name == "localstripe"
    ]
    for name, service in _jetsaga_services().items():
        command = _command(service)
        if command[0] == "localstripe":
            assert localstripe_scripts, "the localstripe package provides no such command"
            continue
        assert command[0] == "jetsaga", name
        try:
            parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"{name}: `{' '.join(command)}` is no jetsaga command")
    for worker in WORKERS:
        assert _command(_compose()["services"][worker]) == ["jetsaga", "worker", worker]
    assert _command(_compose()["services"]["setup"])[:2] == ["jetsaga", "setup"]


def test_compose_sets_only_variables_the_code_reads() -> None:
    for name, service in _jetsaga_services().items():
        environment = service.get("environment", {})
        unknown = set(environment) - set(config._ENV)
        assert not unknown, f"{name} sets {unknown}, which jetsaga never reads"
        settings = config.load({key: str(value) for key, value in environment.items()})
        if name in WORKERS:
            assert settings.http_host == "0.0.0.0", f"{name} would listen on loopback only"


def test_compose_ports_match_the_code_and_prometheus() -> None:
    services = _compose()["services"]
    for worker in WORKERS:
        service = services[worker]
        settings = config.load({k: str(v) for k, v in service["environment"].items()})
        port = settings.port_of(worker)
        assert port == catalog.PORTS[worker] == config.Settings().port_of(worker)
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"], "published on loopback only"
        probe = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in probe, worker
        depends = service["depends_on"]
        assert depends["setup"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
    env = services["order"]["environment"]
    assert urllib.parse.urlsplit(env["NATS_URL"]).hostname == "nats"
    assert _port(env["NATS_URL"]) == 4222
    assert urllib.parse.urlsplit(env["DATABASE_URL"]).hostname == "postgres"
    assert urllib.parse.urlsplit(env["STRIPE_API_BASE"]).hostname == "localstripe"
    localstripe = _command(services["localstripe"])
    assert localstripe[localstripe.index("--port") + 1] == str(_port(env["STRIPE_API_BASE"]))
    assert services["payment"]["depends_on"]["localstripe"]["condition"] == "service_healthy"
    assert services["setup"]["depends_on"]["nats"]["condition"] == "service_healthy"
    for service in services.values():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), f"{mapping} would listen beyond loopback"


def test_compose_mounts_the_prometheus_and_grafana_files() -> None:
    services = _compose()["services"]
    prometheus = dict(_bind_mounts(services["prometheus"]))
    assert prometheus["/etc/prometheus/prometheus.yml"] == PROMETHEUS_DIR / "prometheus.yml"
    assert prometheus["/etc/prometheus/rules.yml"] == PROMETHEUS_DIR / "rules.yml"
    grafana = dict(_bind_mounts(services["grafana"]))
    for kind in ("datasources", "dashboards"):
        target = f"/etc/grafana/provisioning/{kind}"
        assert grafana[target] == GRAFANA_DIR / "provisioning" / kind
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"


# --- Dockerfile and the setup script ----------------------------------------------------------


def test_dockerfile_builds_a_non_root_image_running_a_worker() -> None:
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    froms = [c.value[0] for c in commands if c.cmd == "FROM"]
    assert froms[-1] == "python:3.11-slim"
    final = commands[max(i for i, c in enumerate(commands) if c.cmd == "FROM") :]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")
    (cmd,) = [c for c in final if c.cmd == "CMD"]
    assert cmd.json and list(cmd.value) == ["jetsaga", "worker", "order"]
    build_parser().parse_args(list(cmd.value[1:]))


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    sources = {
        src.rstrip("/")
        for c in commands
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
        for src in c.value[:-1]
    }
    for source in sources:
        assert (ROOT / source).exists(), f"COPY of missing {source}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        path.name
        for path in ROOT.iterdir()
        if (path / "__init__.py").is_file() and any(fnmatch.fnmatch(path.name, p) for p in include)
    }
    assert packages <= sources, f"the image would miss {packages - sources}"
    assert {"pyproject.toml", "README.md"} <= sources
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not sources & ignored, "a COPY source is excluded by .dockerignore"


def test_jetstream_setup_script_runs_jetsaga_setup() -> None:
    script = ROOT / "infra" / "nats" / "jetstream-setup.sh"
    result = subprocess.run(
        ["bash", str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--replicas" in result.stdout


# --- The catalog itself -----------------------------------------------------------------------


def test_catalog_names_every_metric_of_the_spec() -> None:
    spec = ROOT.parent / "shared" / "SPEC.md"
    if not spec.is_file():
        pytest.skip("shared/SPEC.md is not beside the repository")
    section = spec.read_text(encoding="utf-8").split("## 6.")[1].split("\n## ")[0]
    named = {m for m in re.findall(r"`([a-z][a-z0-9_]*)(?:\{[^`]*\})?`", section) if "_" in m}
    assert named, "no metric names found in SPEC §6"
    assert named - set(catalog.METRICS) == set()


def test_docs_describe_every_metric_and_alert() -> None:
    docs = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    missing = [name for name in (*catalog.METRICS, *EXPECTED_ALERTS) if f"`{name}`" not in docs]
    assert missing == []
