"""Goodput: each request judged against every target at once, counted by the real engine."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp

from engine.goodput import RequestLatencies, is_good, latencies
from slo_spec.load import DEFAULT_SPEC, load_spec
from tests.conftest import API_KEY, run_async
from tests.helpers import http_get, metric, parse_metrics

TARGETS = {"ttft_s": 0.5, "inter_token_s": 0.1}


def test_every_target_must_be_met_at_once():
    assert is_good(TARGETS, RequestLatencies(0.2, 0.05, 3.0))
    assert not is_good(TARGETS, RequestLatencies(0.7, 0.05, 3.0))  # slow first token
    assert not is_good(TARGETS, RequestLatencies(0.2, 0.15, 3.0))  # slow stream
    assert is_good(TARGETS, RequestLatencies(0.5, 0.1, 3.0))  # at the target is within it
    assert not is_good(TARGETS, None)  # no first token: a failure


def test_latencies_as_the_server_saw_them():
    tally = SimpleNamespace(first_token_at=10.25, last_token_at=11.15, completion_tokens=10)
    measured = latencies(tally, started_at=10.0, finished_at=11.5)
    assert measured.ttft_s == 0.25 and abs(measured.inter_token_s - 0.1) < 1e-9 and measured.e2e_s == 1.5
    assert latencies(SimpleNamespace(first_token_at=None), 0.0, 1.0) is None


def test_the_default_spec_has_a_goodput_slo():
    goodput = next(slo for slo in load_spec(str(DEFAULT_SPEC)).slos if slo.sli.kind == "goodput")
    assert goodput.sli.goodput_targets == TARGETS


def goodput_counts(url: str) -> tuple[float, float]:
    samples = parse_metrics(http_get(url + "/metrics")[1].decode())
    return (metric(samples, "slo_engine_goodput_requests_total", slo="goodput", good="true"),
            metric(samples, "slo_engine_goodput_requests_total", slo="goodput", good="false"))


@run_async
async def test_the_engine_counts_goodput_per_request(engine):
    before = goodput_counts(engine.url)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async def complete(body: dict) -> int:
            async with session.post(engine.url + "/v1/completions", json=body) as response:
                await response.read()
                return response.status

        fast = await asyncio.gather(*(complete({"prompt": "good", "max_tokens": 8}) for _ in range(3)))
        # Slow between tokens: token_delay_s makes every token 0.15 s apart, over the 0.1 s target.
        async with session.post(engine.url + "/admin/fault-injection", json={"token_delay_s": 0.15}) as r:
            assert r.status == 200
        try:
            slow = await complete({"prompt": "slow", "max_tokens": 4, "stream": True})
        finally:
            async with session.post(engine.url + "/admin/fault-injection", json={"token_delay_s": 0.0}):
                pass
        rejected = await complete({"prompt": "x", "max_tokens": -1})  # a 400 is not a request served
    assert fast == [200] * 3 and slow == 200 and rejected == 400
    good, bad = goodput_counts(engine.url)
    assert good - before[0] == 3
    assert bad - before[1] == 1
