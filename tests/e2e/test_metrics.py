"""SPEC §6 metrics end to end (issue 4): ten orders, two of them declined, on a system of its
own (its own nats-server and PostgreSQL, so every count is exact), paying through localstripe.

Once every order is final and the workers are idle, the three `/metrics` are scraped and
checked against what happened and against the metric catalog. Where a `prometheus` binary
is on PATH, a live Prometheus scrapes the same workers with the project's rules, and every
dashboard and rule expression is evaluated there. The workers log JSON at debug level, and
their logs are checked for the handling fields and for secrets.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from jetsaga.devstack.procs import Child, free_port
from tests.conftest import system_env
from tests.integration.test_infra_config import PROMETHEUS_DIR, _expressions, _grafana_expanded
from tests.support import metrics_catalog as catalog
from tests.support.api import Api, order_body
from tests.support.servers import ServerPool
from tests.support.services import System
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

PAID, DECLINED = 8, 2
# Messages each durable handles for 8 paid and 2 declined orders (no retries in a clean run).
HANDLED = {
    "inventory-service": PAID + DECLINED,  # orders.created
    "inventory-service-confirm": PAID,  # orders.confirmed
    "inventory-service-release": DECLINED,  # inventory.release_request
    "payment-service": PAID + DECLINED,  # payments.process_request
    "order-service-inventory": PAID + DECLINED + DECLINED,  # inventory.reserved, .released
    "order-service-payment": PAID + DECLINED,  # payments.succeeded, payments.failed
}

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@dataclass
class Run:
    system: System
    scrapes: dict[str, Samples]  # service -> its /metrics once everything settled
    logs: dict[str, list[Path]]  # service -> its workers' log files

    def url(self, service: str) -> str:
        return self.system.worker(service).url


async def scrape(http: aiohttp.ClientSession, system: System) -> dict[str, str]:
    texts = {}
    for service in catalog.SERVICES:
        async with http.get(system.worker(service).url + "/metrics") as response:
            assert response.status == 200
            texts[service] = await response.text()
    return texts


def settled(scrapes: dict[str, Samples]) -> bool:
    """Every saga counted by the order worker's refresher (every 5 s), every reservation
    closed, every durable drained (backlog read every 5 s) and every outbox empty."""
    order, inventory = scrapes["order"], scrapes["inventory"]
    if (
        value(order, "order_status_count", status="CONFIRMED") != PAID
        or value(order, "order_status_count", status="CANCELLED") != DECLINED
        or value(order, "saga_in_flight") != 0
        or value(inventory, "inventory_reservations_active") != 0
    ):
        return False
    for service, samples in scrapes.items():
        if value(samples, "outbox_lag_seconds") != 0:
            return False
        for durable in catalog.durables_of(service):
            handled = sum(
                value(samples, "messages_processed_total", durable=durable, outcome=o) or 0
                for o in ("acked", "duplicate")
            )
            pending = value(samples, "jetstream_consumer_pending", durable=durable)
            ack_pending = value(samples, "jetstream_consumer_ack_pending", durable=durable)
            if handled != HANDLED[durable] or pending != 0 or ack_pending != 0:
                return False
    return True


@pytest.fixture(scope="module")
async def run(servers: ServerPool, stripe_api_base: str, worker_logs: Path) -> AsyncIterator[Run]:
    """The system (what `make_system` builds, kept for the module), ten orders through it,
    and the scrapes once it is idle."""
    nats, pg = servers.nats(), servers.postgres()
    env = system_env(nats.url, pg.url, stripe_api_base)
    system = System({**env, "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}, worker_logs, (nats, pg))
    try:
        await system.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            api = Api(http, system.order_url, system.inventory_url, system.payment_url)
            product = f"sku-{uuid.uuid4().hex[:8]}"
            await api.set_stock(product, 100)
            methods = ["pm_card_visa"] * PAID + ["pm_card_chargeCustomerFail"] * DECLINED
            ids = await asyncio.gather(
                *(api.place(order_body(product, payment_method=m)) for m in methods)
            )
            final = await asyncio.gather(*(api.wait_final(i, within=60) for i in ids))
            assert [o["status"] for o in final] == ["CONFIRMED"] * PAID + ["CANCELLED"] * DECLINED

            async def idle() -> dict[str, str] | None:
                texts = await scrape(http, system)
                return texts if settled({s: parse(t) for s, t in texts.items()}) else None

            texts = await wait_until(idle, timeout=60, interval=0.25, message="metrics settle")
        for service, text in texts.items():  # kept beside the worker logs, for a failing run
            (worker_logs / f"{system.worker(service).child.name}.metrics").write_text(text)
        logs = {s: [w.log_path for w in system.workers[s]] for s in catalog.SERVICES}
        yield Run(system, {s: parse(t) for s, t in texts.items()}, logs)
    finally:
        await system.stop()


# --- the values of SPEC §6 --------------------------------------------------------------------


def test_order_metrics_match_ten_orders_of_which_two_were_declined(run: Run) -> None:
    order = run.scrapes["order"]
    assert value(order, "saga_success_rate") == pytest.approx(0.8)
    assert value(order, "saga_ended_total", outcome="completed") == PAID
    assert value(order, "saga_ended_total", outcome="compensated") == DECLINED
    assert value(order, "saga_ended_total", outcome="failed") == 0
    assert value(order, "saga_duration_seconds_count", outcome="completed") == PAID
    assert value(order, "saga_duration_seconds_count", outcome="compensated") == DECLINED
    assert value(order, "saga_duration_seconds_count", outcome="failed") == 0
    assert value(order, "saga_compensation_total") == DECLINED
    assert value(order, "saga_compensation_success_rate") == 1
    assert value(order, "order_status_count", status="CONFIRMED") == PAID
    assert value(order, "order_status_count", status="CANCELLED") == DECLINED
    assert value(order, "order_status_count", status="PENDING") == 0
    assert value(order, "order_status_count", status="FAILED") == 0
    assert value(order, "saga_in_flight") == 0
    assert value(order, "saga_oldest_in_flight_age_seconds") == 0
    assert value(order, "orders_received_total", result="created") == PAID + DECLINED
    # One order worker started every saga and wrote each step: no saga was read back for
    # the reservation and payment of a paid order, nor for the release of a declined one.
    assert value(order, "saga_cache_lookups_total", result="hit") == 2 * PAID + 3 * DECLINED
    assert value(order, "saga_cache_lookups_total", result="miss") == 0


def test_payment_and_inventory_metrics_match_what_happened(run: Run) -> None:
    payment = run.scrapes["payment"]
    assert value(payment, "payments_processed_total", status="succeeded") == PAID
    assert value(payment, "payments_processed_total", status="failed") == DECLINED
    assert value(payment, "payments_processed_total", status="refunded") == 0
    assert value(run.scrapes["inventory"], "inventory_reservations_active") == 0


def test_every_worker_reports_its_consumers_outbox_and_backlog(run: Run) -> None:
    for service, samples in run.scrapes.items():
        assert value(samples, "outbox_lag_seconds") == 0, service
        for durable in catalog.durables_of(service):
            processed = {
                outcome: value(
                    samples, "messages_processed_total", durable=durable, outcome=outcome
                )
                for outcome in catalog.MESSAGE_OUTCOMES
            }
            assert (processed["acked"] or 0) + (processed["duplicate"] or 0) == HANDLED[durable]
            assert processed["nacked"] == processed["dead_lettered"] == 0, durable
            assert value(samples, "messages_dead_lettered_total", durable=durable) == 0
            batches = value(samples, "handler_duration_seconds_count", durable=durable)
            assert batches is not None and 1 <= batches <= HANDLED[durable], durable
            assert value(samples, "handler_duration_seconds_sum", durable=durable) is not None
            # Every message delivered is timed once, from its stream to its batch.
            waited = value(samples, "message_wait_seconds_count", durable=durable)
            assert waited == HANDLED[durable], durable
            waited_s = value(samples, "message_wait_seconds_sum", durable=durable)
            assert waited_s is not None and waited_s >= 0, durable
            assert value(samples, "jetstream_consumer_pending", durable=durable) == 0
            assert value(samples, "jetstream_consumer_ack_pending", durable=durable) == 0


def _combinations(metric: catalog.Metric, service: str) -> Iterator[dict[str, str]]:
    names = list(metric.labels)
    values = [
        catalog.durables_of(service) if name == "durable" else metric.labels[name] for name in names
    ]
    for combo in itertools.product(*values):
        yield dict(zip(names, combo, strict=True))


def test_every_catalog_metric_is_exposed_by_its_service_with_bounded_labels(run: Run) -> None:
    for service, samples in run.scrapes.items():
        for metric in catalog.metrics_of(service):
            exposed = "_count" if metric.kind == "histogram" else ""
            for labels in _combinations(metric, service):
                found = value(samples, metric.name + exposed, **labels)
                assert found is not None, f"{service}: {metric.name}{labels} is not exposed"
        for name, labels in samples:
            metric = catalog.metric_for_sample(name)
            if metric is None:
                continue
            assert service in metric.services, f"{service} exposes {name}"
            for label, label_value in labels:
                if label == "le":
                    continue
                assert label_value in metric.labels[label], f"{service}: {name}{{{label}}}"


# --- logs -------------------------------------------------------------------------------------


def _json_lines(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                yield json.loads(line)


def test_each_handled_message_logs_its_order_subject_durable_deliveries_and_outcome(
    run: Run,
) -> None:
    handled: dict[str, int] = {}
    for service, paths in run.logs.items():
        for line in _json_lines(paths):
            if line.get("msg") != "handled":
                continue
            assert line["level"] == "debug" and line["service"] == f"{service}-service"
            assert line["orderId"] and line["subject"] and line["traceId"]
            assert line["deliveries"] == 1 and line["outcome"] == "acked"
            handled[line["durable"]] = handled.get(line["durable"], 0) + 1
    assert handled == HANDLED


def test_worker_logs_hold_no_payment_method_or_stripe_key(run: Run) -> None:
    for paths in run.logs.values():
        for path in paths:
            text = path.read_text(encoding="utf-8")
            assert text.count("\n") > 10, f"{path} logged almost nothing"
            for secret in ("pm_card", "sk_test"):
                assert secret not in text, f"{secret} in {path}"


# --- a live Prometheus ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def prometheus(run: Run, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Prometheus on loopback scraping the three workers every second, with the project's
    rules; its base URL once every target was scraped and every rule evaluated."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not on PATH")
    where, port = tmp_path_factory.mktemp("prometheus"), free_port()
    config = where / "prometheus.yml"
    jobs = [
        {"job_name": s, "static_configs": [{"targets": [run.url(s).removeprefix("http://")]}]}
        for s in catalog.SERVICES
    ]
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
                "scrape_configs": jobs,
            }
        ),
        encoding="utf-8",
    )
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={where / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    child = Child("prometheus", argv, log_path=where / "prometheus.log")
    child.spawn("Server is ready to receive web requests")
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(child.wait_ready, 60)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def ready() -> bool:
                up = await query(http, base, "up == 1")
                rate = await query(http, base, "saga_success_rate")
                return (
                    len(up) == len(catalog.SERVICES) and bool(rate) and await rules_ok(http, base)
                )

            await wait_until(ready, timeout=60, interval=0.25, message="prometheus scraped")
        yield base
    finally:
        await asyncio.to_thread(child.stop, 30)


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as response:
        body = await response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def rules_ok(http: aiohttp.ClientSession, base: str) -> bool:
    """Every rule of rules.yml loaded, evaluated at least once, and healthy."""
    async with http.get(f"{base}/api/v1/rules") as response:
        groups = (await response.json())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    expected = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text(encoding="utf-8"))
    count = sum(len(group["rules"]) for group in expected["groups"])
    return len(rules) == count and all(
        rule["health"] == "ok" and rule.get("lastEvaluation", "").startswith("2") for rule in rules
    )


async def test_prometheus_reads_a_success_rate_of_0_8_from_the_order_worker(
    prometheus: str,
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        (series,) = await query(http, prometheus, "saga_success_rate")
        payments = await query(http, prometheus, "sum by (status) (payments_processed_total)")
    assert series["metric"]["job"] == "order"
    assert float(series["value"][1]) == pytest.approx(0.8)
    by_status = {s["metric"]["status"]: float(s["value"][1]) for s in payments}
    assert by_status == {"succeeded": PAID, "failed": DECLINED, "refunded": 0}


async def test_every_dashboard_and_rule_expression_evaluates_on_the_live_scrape(
    prometheus: str,
) -> None:
    failures = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for where, expr in _expressions():
            params = {"query": _grafana_expanded(expr)}
            async with http.get(f"{prometheus}/api/v1/query", params=params) as response:
                body = await response.json()
            if body["status"] != "success":
                failures.append(f"{where}: {body.get('error')}")
    assert failures == []
