"""The benchmark's bookkeeping: capacity from the ladder, roles and CPU read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import disk, probe, procfs, wal
from bench.steps import Step, capacity, row


def step(rate: float, p99_ms: float, lost: int = 0, stock_ok: bool = True) -> Step:
    return Step(
        rate=rate, exit_code=0, final_per_s=rate, accepted_per_s=rate, p50_ms=1.0, p95_ms=2.0,
        p99_ms=p99_ms, max_ms=p99_ms, sent=100, finals=100 - lost, lost=lost, stock_ok=stock_ok,
        cpu_s_by_role={"runner": 1.0}, cpu_ms_per_saga=1.0, machine_busy_pct=150.0,
        worker_peak_rss_mib={"worker-order": 80.0}, report="r.json",
    )  # fmt: skip


def test_capacity_is_the_highest_rate_with_nothing_lost_and_p99_within_500_ms() -> None:
    ladder = [step(250, 40), step(500, 90), step(1000, 480), step(1500, 900), step(2000, 300, 3)]
    assert capacity(ladder) == "1000 orders/s"
    assert capacity([step(250, 501)]) == "below the lowest rate tried"
    assert capacity([step(250, 100, stock_ok=False)]) == "below the lowest rate tried"


def test_a_row_shows_rate_latency_lost_cpu_and_worker_memory() -> None:
    line = row(step(1000, 480))
    assert line.split()[:7] == ["1000", "1000.0", "1.0", "2.0", "480.0", "-/-/-", "0"]
    assert line.endswith("80/0/0")


def test_a_row_shows_the_wal_per_saga_and_the_machine_speed_before_the_step() -> None:
    s = step(1000, 480)
    assert row(s).split()[-3:] == ["-", "-", "80/0/0"]  # neither was measured
    s.wal_kb_per_saga, s.probe_python_ms = 13.46, 61.4
    assert row(s).split()[-3:] == ["13.5", "61", "80/0/0"]


def test_wal_per_saga_is_the_counter_difference_over_the_sagas_that_ended() -> None:
    assert wal.kb_per_saga(1_000_000, 14_460_000, 1_000) == 13.46
    assert wal.kb_per_saga(None, 14_460_000, 1_000) is None
    assert wal.kb_per_saga(1_000_000, None, 1_000) is None
    assert wal.kb_per_saga(1_000_000, 2_000_000, 0) is None


def test_the_embedded_cluster_is_found_from_its_pid_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert wal.database_url(tmp_path) is None  # not started
    (tmp_path / "postgres").mkdir()
    pid_file = tmp_path / "postgres" / "postmaster.pid"
    pid_file.write_text("4242\n/data/postgres\n1795465487\n54320\n/tmp/sock\n127.0.0.1\n")
    assert wal.database_url(tmp_path) == "postgresql://postgres@127.0.0.1:54320/postgres"
    pid_file.write_text("4242\n")  # written while the server starts
    assert wal.database_url(tmp_path) is None
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/x")
    assert wal.database_url(tmp_path) == "postgresql://db.example/x"  # an outside server


def test_a_row_shows_the_p99_of_each_final_status_the_step_had() -> None:
    s = step(1000, 480)
    s.p99_ms_by_outcome = {"CONFIRMED": 410.2, "CANCELLED": 655.7}
    assert row(s).split()[5] == "410/656/-"


def test_processes_are_sorted_into_the_parts_of_the_stack() -> None:
    assert procfs.role_of("nats-server", "/x/nats-server -js") == "nats"
    assert procfs.role_of("postgres", "postgres: postgres order_service") == "postgres"
    assert procfs.role_of("", "postgres: autovacuum worker order_service") == "postgres"
    assert procfs.role_of("postgres", "postgres: autovacuum worker payment_service") == "postgres"
    assert procfs.role_of("python3", "python -m jetsaga.cli worker order") == "worker-order"
    assert procfs.role_of("python3", "python -m jetsaga.cli worker payment") == "worker-payment"
    assert procfs.role_of("python3", "python -m jetsaga.devstack.stripe --port 1") == "stripe"
    assert procfs.role_of("python3", "python -m jetsaga.cli up --no-seed") == "up"


def test_cpu_of_a_tree_includes_children_that_already_exited() -> None:
    before = sum(procfs.cpu_by_role(os.getpid()).values())
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)  # reaped: lands in our cutime
    after = sum(procfs.cpu_by_role(os.getpid()).values())
    assert after - before >= 0.3
    assert os.getpid() in procfs.tree(os.getpid())


def test_the_machine_probe_times_python_and_a_round_trip_and_leaves_no_trace() -> None:
    affinity = os.sched_getaffinity(0)
    before = set(procfs.tree(os.getpid()))

    handoff = probe.handoff_us(trips=200)
    python = probe.python_ms(rounds=1)

    assert 0 < handoff < 100_000
    assert 0 < python < 60_000
    assert os.sched_getaffinity(0) == affinity  # the probe pinned itself only while it ran
    assert set(procfs.tree(os.getpid())) == before  # its echo child is gone
    speed = probe.Speed(python_ms=61.5, handoff_us=70.2)
    assert speed.describe() == "python 62 ms, handoff 70 µs"


def test_fsync_figures_count_the_syncs_that_held_commits() -> None:
    f = disk.figures([0.001] * 97 + [0.25, 0.9, 0.003])
    assert (f.syncs, f.p50_ms, f.max_ms, f.stalls, f.stalled_s) == (100, 1.0, 900.0, 2, 1.15)
    assert f.p99_ms == 250.0
    assert disk.figures([]).syncs == 0


def test_the_fsync_probe_syncs_until_told_to_stop_and_leaves_no_file(tmp_path: Path) -> None:
    with disk.FsyncProbe(tmp_path, every_s=0.001) as probe:
        deadline = time.monotonic() + 30
        while probe.figures().syncs < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert probe.figures().syncs >= 5
    assert probe.figures().max_ms > 0
    assert list(tmp_path.iterdir()) == []


def test_a_row_shows_the_slowest_fsync_of_the_step_and_its_stalls() -> None:
    s = step(1000, 480)
    assert " - " in row(s)
    s.fsync = disk.figures([0.001, 0.3])
    assert " 300 (1) " in row(s)
