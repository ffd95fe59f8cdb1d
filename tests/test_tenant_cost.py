"""Per-tenant cost (issue 16): the pod's GPU cost per hour shared among tenants by weighted tokens.

The expected values are worked out by hand here, from the definitions:
    weighted tokens = generated + prompt x w          share = weighted / all tenants' weighted
    cost per hour   = pod's cost per hour x share
    cost per 1M     = cost per hour / (prompt + generated) tokens per hour x 1e6
    cost per 1M good = cost per hour / good generated tokens per hour x 1e6

The worked example: 2 GPUs at $2/h, so the pod costs $4/h. Over a minute, tenant A
generates 300 tokens from 400 prompt tokens (240 of the 300 for requests that met their
SLO), tenant B generates 100 from no prompt at all (none good), tenant C is idle. With
w = 0.25: A weighs 300 + 400 x 0.25 = 400, B weighs 100, together 500, so A's share
is 400/500 = 0.8 ($3.20/h) and B's 100/500 = 0.2 ($0.80/h); C's share is 0 ($0/h).
A's tokens are (300 + 400) x 60 = 42,000 an hour: $3.20 / 42,000 x 1e6 = $76.19 per
million; its good tokens 240 x 60 = 14,400 an hour: $222.22 per million. B's 100 x 60 =
6,000 an hour: $133.33 per million, and no good tokens, so no cost per good token.
"""

from __future__ import annotations

import argparse
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from slo_sidecar.sidecar.app import Sidecar, build_cost_collector
from slo_sidecar.sidecar.config import ConfigError, SidecarConfig, add_arguments, load_config
from slo_sidecar.sidecar.cost import CostCollector, TenantCost, tenant_costs
from slo_sidecar.sidecar.engine_poller import EnginePoller
from slo_sidecar.sidecar.engine_snapshot import PROCESS_START, SnapshotBuilder, TenantTokenRates
from slo_sidecar.sidecar.exposition import Sample
from slo_sidecar.sidecar.guard import GuardedExposition
from tests.helpers import metric, parse_metrics

POD_USD_PER_HOUR = 2 * 2.0  # 2 GPUs at $2 an hour
A_PER_MINUTE = {"prompt": 400, "generation": 300, "good": 240}
B_PER_MINUTE = {"prompt": 0, "generation": 100, "good": 0}

A_SHARE, B_SHARE = 400 / 500, 100 / 500  # 0.8, 0.2
A_USD_PER_HOUR, B_USD_PER_HOUR = 4 * 0.8, 4 * 0.2  # $3.20, $0.80
A_USD_PER_MILLION = 3.20 / ((300 + 400) * 60) * 1e6  # $76.19
A_USD_PER_MILLION_GOOD = 3.20 / (240 * 60) * 1e6  # $222.22
B_USD_PER_MILLION = 0.80 / (100 * 60) * 1e6  # $133.33


def per_second(per_minute: dict[str, float]) -> TenantTokenRates:
    return TenantTokenRates(per_minute["prompt"] / 60, per_minute["generation"] / 60, per_minute["good"] / 60)


def approx_tenant(share: float, usd_per_hour: float, per_million: float | None,
                  per_million_good: float | None) -> TenantCost:
    approx = pytest.approx
    return TenantCost(approx(share), approx(usd_per_hour), None if per_million is None else approx(per_million),
                      None if per_million_good is None else approx(per_million_good))


def approx_rates(rates: TenantTokenRates) -> TenantTokenRates:
    approx = pytest.approx
    return TenantTokenRates(approx(rates.prompt), approx(rates.generation),
                            None if rates.good is None else approx(rates.good))


# --- the pure figures ----------------------------------------------------------------------------

def test_the_worked_example():
    costs = tenant_costs(POD_USD_PER_HOUR, {"A": per_second(A_PER_MINUTE), "B": per_second(B_PER_MINUTE),
                                            "C": TenantTokenRates(0.0, 0.0, 0.0)}, prompt_token_weight=0.25)
    assert costs["A"] == approx_tenant(A_SHARE, A_USD_PER_HOUR, A_USD_PER_MILLION, A_USD_PER_MILLION_GOOD)
    assert costs["B"] == approx_tenant(B_SHARE, B_USD_PER_HOUR, B_USD_PER_MILLION, None)
    # The idle tenant: share 0, no cost per hour, and no cost per token (absent, not infinite).
    assert costs["C"] == TenantCost(0.0, 0.0, None, None)




@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("tenants", [
    {"A": TenantTokenRates(400 / 60, 300 / 60), "B": TenantTokenRates(0.0, 100 / 60)},
    {"base": TenantTokenRates(1234.5, 87.0), "medical": TenantTokenRates(3.0, 410.25), "legal": TenantTokenRates(0, 0),
     "unknown": TenantTokenRates(17.0, 0.0)},
    {"only": TenantTokenRates(10.0, 1.0)},
])
def test_shares_sum_to_1_and_costs_to_the_pods_while_tokens_flow(weight, tenants):
    costs = tenant_costs(POD_USD_PER_HOUR, tenants, weight)
    weighted = {m: r.generation + r.prompt * weight for m, r in tenants.items()}
    if sum(weighted.values()) == 0:  # w = 0 and prompt tokens only: nothing to share by
        assert all(c.share == 0 and c.usd_per_hour == 0 for c in costs.values())
        return
    assert sum(c.share for c in costs.values()) == pytest.approx(1.0)
    assert sum(c.usd_per_hour for c in costs.values()) == pytest.approx(POD_USD_PER_HOUR)
    for model, cost in costs.items():
        assert cost.share == pytest.approx(weighted[model] / sum(weighted.values()))
        assert 0 <= cost.share <= 1


def test_prompt_weight_moves_cost_towards_prompt_heavy_tenants():
    # A: 400 prompt + 300 generated, B: 100 generated. w = 0: A 300/400 = 0.75; w = 1: A 700/800 = 0.875.
    rates = {"A": per_second(A_PER_MINUTE), "B": per_second(B_PER_MINUTE)}
    assert tenant_costs(4.0, rates, 0.0)["A"].share == pytest.approx(0.75)
    assert tenant_costs(4.0, rates, 1.0)["A"].share == pytest.approx(0.875)


def test_no_tokens_at_all_gives_shares_of_0_and_no_per_token_cost():
    costs = tenant_costs(4.0, {"A": TenantTokenRates(0.0, 0.0), "B": TenantTokenRates(0.0, 0.0, None)}, 0.25)
    assert costs == {"A": TenantCost(0.0, 0.0, None, None), "B": TenantCost(0.0, 0.0, None, None)}


# --- token rates from the engine's counters ------------------------------------------------------

def tenant_samples(counts: dict[str, tuple[float, float, float | None]], *, extra: tuple = ()) -> list[Sample]:
    """The engine's per-tenant counters: model -> (prompt, generation, good or None when not counted)."""
    samples = []
    for model, (prompt, generation, good) in counts.items():
        labels = (("model_name", "tiny-llama"), ("model", model), *extra)
        samples.append(Sample("slo_engine_prompt_tokens_total", labels, prompt))
        samples.append(Sample("slo_engine_generation_tokens_total", labels, generation))
        if good is not None:
            samples.append(Sample("slo_engine_goodput_tokens_total", labels, good))
    return samples


class Tenants:
    """The tenants' token rates of the engine snapshot, fed as the poller feeds the builder (the engine's
    process start time is a sample of the scrape)."""

    def __init__(self, window_s: float = 60.0):
        self.builder = SnapshotBuilder(window_s=window_s)
        self.rates: dict[str, TenantTokenRates] | None = None

    def update(self, samples: list[Sample], now: float, start_time: float | None = None):
        started = [Sample(PROCESS_START, (), start_time)] if start_time is not None else []
        self.rates = self.builder.build([*samples, *started], now, now).tenant_tokens
        return self.rates


def test_token_rates_over_the_window_from_the_counters():
    tenants = Tenants(window_s=60.0)
    assert tenants.update(tenant_samples({"A": (1000, 500, 100), "B": (0, 50, 0)}), 0.0, 1.0) == {}  # one point
    rates = tenants.update(tenant_samples({"A": (1400, 800, 340), "B": (0, 150, 0)}), 60.0, 1.0)
    assert rates == {"A": approx_rates(per_second(A_PER_MINUTE)), "B": approx_rates(per_second(B_PER_MINUTE))}
    assert tenants.rates is rates


def test_rates_hold_on_a_restart_a_new_tenant_and_a_vanished_one():
    tenants = Tenants(window_s=60.0)
    tenants.update(tenant_samples({"A": (1000, 500, None), "B": (10, 10, None)}), 0.0, 1.0)
    # The engine restarted (new start time): its counters began again at 0, here now 400 and 300.
    rates = tenants.update(tenant_samples({"A": (400, 300, None), "B": (10, 10, None)}), 60.0, 2.0)
    assert rates["A"] == approx_rates(TenantTokenRates(400 / 60, 300 / 60, None))  # no negative, no spike
    assert rates["B"] == approx_rates(TenantTokenRates(10 / 60, 10 / 60, None))  # its 10s are new since the restart
    # A tenant seen for the first time counts nothing yet (Prometheus's rule); the others keep their history.
    rates = tenants.update(tenant_samples({"A": (400, 300, None), "unknown": (5, 0, None)}), 90.0, 2.0)
    assert set(rates) == {"A"} and rates["A"] == approx_rates(TenantTokenRates(400 / 90, 300 / 90, None))
    rates = tenants.update(tenant_samples({"A": (400, 300, None), "unknown": (9, 0, None)}), 120.0, 2.0)
    assert rates["unknown"] == approx_rates(TenantTokenRates(4 / 30, 0.0, None))
    assert set(tenants.builder._tenants) == {"A", "unknown"}  # B vanished from the engine: forgotten


def test_other_labels_are_summed_and_unlabelled_series_ignored():
    tenants = Tenants(window_s=60.0)
    first = [*tenant_samples({"A": (0, 0, None)}, extra=(("shard", "0"),)),
             *tenant_samples({"A": (0, 0, None)}, extra=(("shard", "1"),)),
             Sample("slo_engine_generation_tokens_total", (("model_name", "tiny-llama"),), 0)]
    second = [*tenant_samples({"A": (60, 30, None)}, extra=(("shard", "0"),)),
              *tenant_samples({"A": (60, 30, None)}, extra=(("shard", "1"),)),
              Sample("slo_engine_generation_tokens_total", (("model_name", "tiny-llama"),), 999)]
    tenants.update(first, 0.0)
    assert tenants.update(second, 60.0) == {"A": approx_rates(TenantTokenRates(2.0, 1.0, None))}


# --- through the exposition ----------------------------------------------------------------------

def scrape(collector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    return parse_metrics(generate_latest(registry).decode())


def served(samples: dict, name: str, **labels: str) -> bool:
    wanted = set(labels.items())
    return any(sample == name and wanted <= sample_labels for sample, sample_labels in samples)


def test_the_collector_serves_each_tenants_figures_by_model():
    tenants = Tenants(window_s=60.0)
    tenants.update(tenant_samples({"A": (1000, 500, 100), "B": (0, 50, 0), "C": (7, 7, 7)}), 0.0)
    tenants.update(tenant_samples({"A": (1400, 800, 340), "B": (0, 150, 0), "C": (7, 7, 7)}), 60.0)
    collector = CostCollector(2.0, gpus=lambda: 2, generation_rate=lambda: 400 / 60,
                              tenant_rates=lambda: tenants.rates, prompt_token_weight=0.25)
    samples = scrape(collector)
    assert metric(samples, "sidecar_cost_usd_per_hour") == POD_USD_PER_HOUR
    for model, share, usd_per_hour in (("A", A_SHARE, A_USD_PER_HOUR), ("B", B_SHARE, B_USD_PER_HOUR),
                                       ("C", 0.0, 0.0)):
        assert metric(samples, "sidecar_tenant_token_share_ratio", model=model) == pytest.approx(share)
        assert metric(samples, "sidecar_tenant_cost_usd_per_hour", model=model) == pytest.approx(usd_per_hour)
    assert metric(samples, "sidecar_tenant_cost_usd_per_million_tokens", model="A") == pytest.approx(A_USD_PER_MILLION)
    assert metric(samples, "sidecar_tenant_cost_usd_per_million_tokens", model="B") == pytest.approx(B_USD_PER_MILLION)
    assert metric(samples, "sidecar_tenant_cost_usd_per_million_good_tokens", model="A") == pytest.approx(
        A_USD_PER_MILLION_GOOD)
    # No good tokens for B, no tokens at all for C: those figures are absent, not infinite.
    assert not served(samples, "sidecar_tenant_cost_usd_per_million_good_tokens", model="B")
    assert not served(samples, "sidecar_tenant_cost_usd_per_million_tokens", model="C")
    assert not served(samples, "sidecar_tenant_cost_usd_per_million_good_tokens", model="C")
    assert sum(v for (name, _), v in samples.items() if name == "sidecar_tenant_cost_usd_per_hour") == pytest.approx(
        metric(samples, "sidecar_cost_usd_per_hour"))
    # Only the `model` label, with only the values the engine exposed.
    assert {labels for (name, labels) in samples if name.startswith("sidecar_tenant_")} == {
        frozenset({("model", m)}) for m in "ABC"}


def test_no_tenant_figures_without_tenant_rates():
    samples = scrape(CostCollector(2.0, gpus=lambda: 2, generation_rate=lambda: None))
    assert metric(samples, "sidecar_cost_usd_per_hour") == 4
    assert not any(name.startswith("sidecar_tenant_") for name, _ in samples)


ENGINE_TEXT = """\
# TYPE slo_engine_prompt_tokens_total counter
slo_engine_prompt_tokens_total{{model_name="tenant-cost-test",model="A"}} {a_prompt}
slo_engine_prompt_tokens_total{{model_name="tenant-cost-test",model="B"}} 0
# TYPE slo_engine_generation_tokens_total counter
slo_engine_generation_tokens_total{{model_name="tenant-cost-test",model="A"}} {a_generation}
slo_engine_generation_tokens_total{{model_name="tenant-cost-test",model="B"}} {b_generation}
# TYPE slo_engine_goodput_tokens_total counter
slo_engine_goodput_tokens_total{{model_name="tenant-cost-test",model="A"}} {a_good}
slo_engine_goodput_tokens_total{{model_name="tenant-cost-test",model="B"}} 0
"""


def test_the_sidecar_wiring_reads_the_engines_counters_and_withdraws_them_when_stale(monkeypatch):
    config = SidecarConfig(gpu_hourly_usd=2.0, gpus=2, rate_window_s=60.0, prompt_token_weight=0.25)
    engine = EnginePoller(config)
    exposition = GuardedExposition()
    sidecar = Sidecar(config, [engine], exposition)
    exposition.add("cost", build_cost_collector(config, sidecar, engine, gpus=lambda: 2))
    # Two scrapes a minute apart, read as the poller reads each one it fetches.
    for now, counts in ((100.0, dict(a_prompt=1000, a_generation=500, a_good=100, b_generation=50)),
                        (160.0, dict(a_prompt=1400, a_generation=800, a_good=340, b_generation=150))):
        monkeypatch.setattr("slo_sidecar.sidecar.engine_poller.time.monotonic", lambda now=now: now)
        engine.take(ENGINE_TEXT.format(**counts))
    state = sidecar.states["engine"]
    state.last_success, state.last_error = time.time(), None
    fresh = parse_metrics(exposition.encode(generate_latest).decode())
    assert metric(fresh, "sidecar_tenant_token_share_ratio", model="A") == pytest.approx(A_SHARE)
    assert metric(fresh, "sidecar_tenant_cost_usd_per_hour", model="B") == pytest.approx(B_USD_PER_HOUR)
    assert metric(fresh, "sidecar_tenant_cost_usd_per_million_good_tokens", model="A") == pytest.approx(
        A_USD_PER_MILLION_GOOD)
    # Past stale_after_s the engine's values are withdrawn, the tenants' cost with them; the pod's bill stays.
    state.last_success = time.time() - 10 * config.stale_after_s
    stale = parse_metrics(exposition.encode(generate_latest).decode())
    assert not any(name.startswith("sidecar_tenant_") for name, _ in stale)
    assert not served(stale, "sidecar_cost_usd_per_million_generated_tokens")
    assert metric(stale, "sidecar_cost_usd_per_hour") == POD_USD_PER_HOUR


class Consumer:
    """An engine snapshot consumer that keeps what it was given, or fails on it."""

    def __init__(self, metrics=(), fails: bool = False):
        self.metrics, self.fails = metrics, fails
        self.taken: list = []
        self.cleared = False

    def take(self, snapshot) -> None:
        if self.fails:
            raise RuntimeError("consumer bug")
        self.taken.append(snapshot)

    def clear(self) -> None:
        self.cleared = True


def test_a_bug_in_one_consumer_costs_its_own_figures_only():
    broken, sound = Consumer(fails=True), Consumer()
    engine = EnginePoller(SidecarConfig(), [broken, sound])
    families = engine.take(ENGINE_TEXT.format(a_prompt=1, a_generation=1, a_good=1, b_generation=1))
    assert families and engine.last_snapshot is not None  # the engine's own figures are read all the same
    assert broken.cleared and not sound.cleared
    assert sound.taken == [engine.last_snapshot], "the consumer after the broken one is fed all the same"


def test_each_scrape_is_parsed_once_and_keeps_the_series_its_consumers_name():
    """The consumers are fixed at construction, so the scrape's sample filter knows their series before
    the first scrape; all of them get the one snapshot."""
    first, second = Consumer(metrics=["reader_only_total"]), Consumer()
    engine = EnginePoller(SidecarConfig(), [first, second])
    engine.take("# TYPE reader_only_total counter\nreader_only_total 7\n")
    (snapshot,) = first.taken
    assert second.taken == [snapshot]
    assert [(s.name, s.value) for s in snapshot.samples if s.name.startswith("reader_only")] == [
        ("reader_only_total", 7.0)]


# --- the setting ---------------------------------------------------------------------------------

def config_from(argv: list[str], environ: dict[str, str]) -> SidecarConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(argv), environ)


def test_prompt_token_weight_defaults_to_a_quarter_and_accepts_0_to_1(tmp_path):
    assert config_from([], {}).prompt_token_weight == 0.25
    assert config_from(["--prompt-token-weight", "0"], {}).prompt_token_weight == 0.0
    assert config_from([], {"SLO_SIDECAR_PROMPT_TOKEN_WEIGHT": "1"}).prompt_token_weight == 1.0
    yaml_file = tmp_path / "sidecar.yaml"
    yaml_file.write_text("prompt_token_weight: 0.5\n")
    assert config_from(["--config", str(yaml_file)], {}).prompt_token_weight == 0.5


@pytest.mark.parametrize("source, message", [
    ("yaml:prompt_token_weight: 1.5\n", "sidecar.yaml:1: prompt_token_weight: expected a number from 0 to 1, got 1.5"),
    ("yaml:prompt_token_weight: quarter\n", "sidecar.yaml:1: prompt_token_weight: expected a number from 0 to 1, "
                                            "got 'quarter'"),
    ("yaml:prompt_token_weight: true\n", "sidecar.yaml:1: prompt_token_weight: expected a number from 0 to 1, "
                                         "got True"),
    ("env:-0.1", "environment variable SLO_SIDECAR_PROMPT_TOKEN_WEIGHT: prompt_token_weight: expected a number from "
                 "0 to 1, got -0.1"),
    ("env:nan", "environment variable SLO_SIDECAR_PROMPT_TOKEN_WEIGHT: prompt_token_weight: expected a number from "
                "0 to 1, got nan"),
    ("flag:2", "--prompt-token-weight: prompt_token_weight: expected a number from 0 to 1, got 2"),
])
def test_a_prompt_token_weight_outside_0_to_1_is_refused_by_name(tmp_path, source, message):
    kind, _, value = source.partition(":")
    argv, environ = [], {}
    if kind == "yaml":
        yaml_file = tmp_path / "sidecar.yaml"
        yaml_file.write_text(value)
        argv = ["--config", str(yaml_file)]
    elif kind == "env":
        environ = {"SLO_SIDECAR_PROMPT_TOKEN_WEIGHT": value}
    else:
        argv = ["--prompt-token-weight", value]
    with pytest.raises(ConfigError) as caught:
        config_from(argv, environ)
    assert message in str(caught.value)
