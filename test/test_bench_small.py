"""``bench/`` for small objects (issue 15): the stock Twisted proxy as a target, CPU per request,
p99, and the signed load a SigV4-verifying daemon accepts."""

from __future__ import annotations

import os
import re

import pytest

from bench import clients, signed
from bench.daemon import VIRTUAL_BUCKET, S3BalanceDaemon
from bench.nginx import BACKEND_BUCKET, Nginx
from bench.run import S3BALANCE, Measurement
from bench.small import S3BALANCE_SIGV4, TWISTED_PROXY, small_verdicts, timed_load
from bench.twistedproxy import TwistedProxy
from test import test_bench_smoke as smoke

pytestmark = [pytest.mark.timeout(60), smoke.needs_nginx_and_curl]

needs_wrk = pytest.mark.skipif(not clients.wrk_available(), reason="needs wrk")


# The same temp dir and nginx backend as the smoke test's.
workdir = smoke.workdir
backend = smoke.backend


def test_twisted_proxy_carries_small_objects_and_its_cpu_is_charged(
    backend: Nginx, workdir: str
) -> None:
    proxy = TwistedProxy(workdir, backend.port)
    try:
        proxy.start()
        prefix = f"/{BACKEND_BUCKET}/small/"
        clients.fill_keys(proxy.url, prefix, 2, 5, 4096, 2, 20.0)
        load, cpu_us = timed_load(
            lambda: clients.run_thread_pool(proxy.url, "GET", prefix, 5, 4096, 2, 0.5),
            [proxy.pid],
        )
        assert load.failures == 0 and load.requests > 10, load
        assert cpu_us > 0
    finally:
        proxy.stop()


@needs_wrk
def test_signed_load_is_accepted_where_unsigned_is_refused(backend: Nginx, workdir: str) -> None:
    daemon = S3BalanceDaemon(workdir, backend.url, key_pair=(signed.ACCESS_KEY, signed.SECRET_KEY))
    try:
        daemon.start()
        prefix = f"/{VIRTUAL_BUCKET}/small/"
        sign = signed.request_signer(daemon.url)
        clients.fill_keys(daemon.url, prefix, 2, 3, 4096, 2, 20.0, sign)
        for method in ("PUT", "GET"):
            files = signed.write_signed_requests(
                os.path.join(workdir, f"signed-{method}-"), daemon.url, method, prefix, 2, 3, 4096
            )
            load = clients.run_wrk(
                workdir, daemon.url, method, prefix, 3, 4096, 2, 1.0, signed_prefix=files
            )
            assert load.failures == 0 and load.requests > 5, load
            assert load.p99_seconds is not None and load.p99_seconds > 0
        unsigned = clients.run_wrk(workdir, daemon.url, "GET", prefix, 3, 4096, 2, 1.0)
        assert unsigned.requests == 0 and unsigned.failures > 0
    finally:
        daemon.stop()


def _entry(rate: float, cpu_us: float, p99_ms: float) -> Measurement:
    entry = Measurement("", "", "req/s", [rate])
    entry.cpu_us_per_request.append(cpu_us)
    entry.p99_ms.append(p99_ms)
    return entry


def test_small_verdicts_judge_issue_15() -> None:
    label = "4 KiB x64"
    measurements = {
        (f"GET {label}", S3BALANCE): _entry(2000.0, 440.0, 30.0),
        (f"GET {label}", TWISTED_PROXY): _entry(2100.0, 445.0, 40.0),
        (f"GET {label}", S3BALANCE_SIGV4): _entry(1900.0, 560.0, 30.0),
        (f"PUT {label}", S3BALANCE): _entry(2300.0, 950.0, 90.0),
        (f"PUT {label}", TWISTED_PROXY): _entry(2190.0, 455.0, 57.0),
    }
    judged = {t: p for t, _, p in small_verdicts(measurements, label, 64, S3BALANCE)}
    assert judged[f"GET {label}: s3balance CPU per request <= 450 µs"] is True
    assert judged[f"PUT {label}: s3balance CPU per request <= 900 µs"] is False
    assert judged[f"GET {label}: s3balance >= 1.0x twisted-proxy req/s"] is False
    assert judged[f"PUT {label}: s3balance >= 1.0x twisted-proxy req/s"] is True
    p99 = f"PUT {label}: s3balance p99 <= 100 ms (judged at 64 connections)"
    assert judged[p99] is True
    assert judged[f"GET {label}: SigV4 adds <= 100 µs CPU per request"] is False  # +120 µs
    at_eight = {t: p for t, _, p in small_verdicts(measurements, "4 KiB x8", 8, S3BALANCE)}
    assert all(passed is None for passed in at_eight.values())  # nothing measured at x8


def test_profile_summary_splits_reactor_and_other_threads_and_skips_idle() -> None:
    from bench.profile import top_functions

    raw = [
        "<module> (twistd:8);run (/x/site-packages/twisted/app.py:1);"
        "_serve (/r/s3balance/web/resource.py:9) 30\n",
        "<module> (twistd:8);doPoll (/x/site-packages/twisted/epoll.py:2);"
        "EPollReactor.doPoll (/x/site-packages/twisted/epollreactor.py:227) 500\n",
        "_bootstrap (threading.py:1);_get_object (/r/s3balance/db/store.py:5) 10\n",
        "_bootstrap (threading.py:1);Condition.wait (threading.py:327) 900\n",
    ]
    reactor = "\n".join(top_functions(raw, True, 5))
    assert "30 busy samples" in reactor and "100.0%  _serve (s3balance/web/resource.py)" in reactor
    others = "\n".join(top_functions(raw, False, 5))
    assert "10 busy samples" in others and "_get_object (s3balance/db/store.py)" in others


@needs_wrk
def test_one_command_judges_sigv4_on_rounds_pinned_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.run import main

    tiny = ["--sizes", "none", "--repeat", "1", "--small-count", "8", "--small-seconds", "0.3"]
    paths = f"{S3BALANCE},{S3BALANCE_SIGV4}"
    code = main([*tiny, "--concurrency", "4", "--pair-rounds", "2", "--paths", paths])
    out = capsys.readouterr().out
    spread = r"[+-]\d+ µs \(IQR [+-]\d+\.\.[+-]\d+, range [+-]\d+\.\.[+-]\d+, 2 paired rounds\)"
    assert re.search(
        rf"^  GET 4 KiB x4, pinned to one core, loaded together: {S3BALANCE_SIGV4} CPU/request - "
        rf"{S3BALANCE} CPU/request: {spread}$",
        out,
        re.M,
    ), out
    assert re.search(
        rf"^  \[(PASS|FAIL)\] GET 4 KiB x4: SigV4 adds <= 100 µs CPU per request: {spread}$",
        out,
        re.M,
    ), out
    assert re.search(rf"^GET 4 KiB x4\s+{S3BALANCE_SIGV4}\s+\d+", out, re.M), out  # its row stays
    assert "FAILED" not in out and "error:" not in out, out
    assert code in (0, 1)
