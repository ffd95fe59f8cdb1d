"""Nothing crashes, nothing is lost: the sidecar under broken collectors, broken state files, failed
saves and kills.

- A collector that raises, or yields what cannot be encoded, loses its own families for that
  scrape; /metrics answers 200 with the rest, counts it, and logs it once per streak.
- A state file that is corrupt, cut short, foreign, too old or unreadable is set aside with one
  log line and a count; the tracker starts afresh, never half-restored.
- A save that fails (a full disk) is counted, logged once, keeps the old file whole, and the
  sidecar serves on; a sidecar killed at any moment leaves a state file it takes up again.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from slo_sidecar.sidecar.app import Sidecar
from slo_sidecar.sidecar.config import SidecarConfig
from slo_sidecar.sidecar.cost import CostCollector
from slo_sidecar.sidecar.exposition import Sample
from slo_sidecar.sidecar.guard import GuardedCollector, GuardedExposition
from slo_sidecar.sidecar.slo_families import SloCollector
from slo_sidecar.sidecar import slo_state
from slo_sidecar.sidecar.slo_state import SloStateFile
from slo_sidecar.sidecar.slo_tracker import DISCARD_REASONS, SloTracker, dumps, spec_fingerprint
from slo_sidecar.app.processes import SidecarProcess, http_get
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.fake_exposition_server import ExpositionServer
from tests.helpers import REPO, VLLM_EXPOSITION, metric, parse_metrics

SPEC = load_spec(str(DEFAULT_SPEC))
TEXT = "text/plain;version=0.0.4"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"
PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- one collector failing never fails /metrics ----------------------------------------------------

def good_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("good_value", "Served whatever the others do.", value=1.0)


def raises():
    raise RuntimeError("collector bug")


def raises_half_way():
    yield GaugeMetricFamily("half_value", "Yielded before the raise: left out all the same.", value=1.0)
    raise RuntimeError("collector bug, half-way")


def yields_none():
    yield None


def label_not_a_string():
    family = GaugeMetricFamily("bad_label", "A label value that is not a string.", labels=["gpu"])
    family.add_metric([0], 1.0)  # the encoder calls str methods on it
    return [family]


def value_not_a_number():
    family = GaugeMetricFamily("bad_value", "A value that is not a number.", labels=["gpu"])
    family.add_metric(["0"], "many")
    return [family]


class Collector:
    def __init__(self, collect):
        self.collect = collect


def scrape_text(exposition: GuardedExposition, accept: str) -> str:
    encoder, _ = choose_encoder(accept)
    return exposition.encode(encoder).decode()


def families_in(body: str, accept: str) -> dict[str, list]:
    """{family name: samples} of a body, read by prometheus_client's parser of its format (so it must parse)."""
    if accept == OPENMETRICS:
        assert body.endswith("# EOF\n")
        families = parse_openmetrics(body)
    else:
        families = text_string_to_metric_families(body)
    return {family.name: family.samples for family in families}


def exposition_errors(families: dict[str, list]) -> dict[str, float]:
    return {sample.labels["collector"]: sample.value for sample in families["sidecar_exposition_errors"]
            if sample.name == "sidecar_exposition_errors_total"}


@pytest.mark.parametrize("accept", [TEXT, OPENMETRICS], ids=["text", "openmetrics"])
@pytest.mark.parametrize("broken", [raises, raises_half_way, yields_none, label_not_a_string, value_not_a_number])
def test_a_broken_collector_loses_its_own_families_is_counted_and_logged_once_per_streak(broken, accept, caplog):
    exposition = GuardedExposition()
    exposition.add("good", Collector(lambda: [good_family()]))
    collect = {"now": broken}
    exposition.add("bad", Collector(lambda: collect["now"]()))
    caplog.set_level(logging.INFO, logger="slo_sidecar.sidecar.exposition")
    for scrape in (1, 2, 3):
        families = families_in(scrape_text(exposition, accept), accept)
        assert "good_value" in families
        assert not families.keys() & {"half_value", "bad_label", "bad_value"}
        # Counted once per scrape the collector failed, this one included.
        assert exposition_errors(families) == {"good": 0, "bad": scrape}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage().startswith("collector bad failed"), caplog.text

    collect["now"] = lambda: [GaugeMetricFamily("bad_value", "Mended.", value=2.0)]
    for _ in (1, 2):
        families = families_in(scrape_text(exposition, accept), accept)
        assert "bad_value" in families and exposition_errors(families) == {"good": 0, "bad": 3}
    recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert recovered == ["collector bad served again after 3 failed scrapes"], caplog.text
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_the_counter_starts_at_0_for_every_guarded_collector():
    exposition = GuardedExposition()
    for name in ("process", "sidecar", "slo", "cost"):
        exposition.add(name, Collector(lambda: []))
    samples = parse_metrics(scrape_text(exposition, TEXT))
    assert {dict(labels)["collector"]: value for (name, labels), value in samples.items()
            if name == "sidecar_exposition_errors_total"} == {"process": 0, "sidecar": 0, "slo": 0, "cost": 0}


def test_a_guarded_collector_is_safe_to_register_in_a_registry_which_describes_it_at_once():
    """prometheus_client's registry calls describe() in register() (with auto_describe, collect() when there
    is no describe(); a guard always has one): a raising describe() reserves no names and raises nothing."""
    failures: list[str] = []

    class Broken:
        def describe(self):
            raise RuntimeError("describe bug")

        def collect(self):
            raise RuntimeError("collect bug")

    for auto_describe in (False, True):
        registry = CollectorRegistry(auto_describe=auto_describe)
        registry.register(GuardedCollector("broken", Broken(), lambda name, exc: failures.append(str(exc))))
        registry.register(GuardedCollector("auto", Collector(raises), lambda name, exc: failures.append(str(exc))))
        assert generate_latest(registry) == b""
    assert failures.count("describe bug") == 2 and "collector bug" in failures


@pytest.mark.parametrize("accept", [TEXT, OPENMETRICS], ids=["text", "openmetrics"])
def test_the_sidecars_metrics_answers_200_when_the_slo_collector_raises(accept):
    tracker = SloTracker(SPEC)
    tracker.states = lambda now: raises()  # a bug at scrape time
    exposition = GuardedExposition()
    exposition.add("slo", SloCollector(tracker))
    sidecar = Sidecar(SidecarConfig(), [], exposition)
    exposition.add("cost", CostCollector(4.0, gpus=lambda: 2, generation_rate=lambda: None))

    async def get() -> tuple[int, str]:
        response = await sidecar.metrics(make_mocked_request("GET", "/metrics", headers={"Accept": accept}))
        return response.status, response.body.decode()

    status, body = asyncio.run(get())
    assert status == 200
    families = families_in(body, accept)
    assert "sidecar_cost_usd_per_hour" in families and "sidecar_collector_errors" in families
    assert not any(name.startswith("slo_") for name in families)
    assert exposition_errors(families) == {"slo": 1, "sidecar": 0, "cost": 0}


# --- a bad state file is set aside whole ---------------------------------------------------------

def scrape_samples(ok: float, failed: float, slow: float, fast: float | None = None) -> list[Sample]:
    """The engine's SLI counters: requests answered 200 and 500, and TTFT judged fast (default: ok) and slow."""
    http = "slo_engine_http_requests_total"
    endpoint = ("endpoint", "/v1/completions")
    return [Sample(http, (("code", "200"), endpoint), ok), Sample(http, (("code", "500"), endpoint), failed),
            Sample("slo_engine_slo_requests_total", (("slo", "ttft"), ("good", "true")), ok if fast is None else fast),
            Sample("slo_engine_slo_requests_total", (("slo", "ttft"), ("good", "false")), slow)]


def tracker_with_history(start: float = 1_000.0, scrapes: int = 40, step: float = 15.0, rate: float = 7.0
                         ) -> SloTracker:
    tracker = SloTracker(SPEC)
    for i in range(scrapes):
        tracker.observe(scrape_samples(rate * 100 * i, rate * i, 2 * rate * i), start + i * step, 12.0)
    return tracker


def json_copy(value):
    return json.loads(json.dumps(value))


FRESH = json_copy(SloTracker(SPEC).snapshot())
SAVED = json_copy(tracker_with_history().snapshot())  # last scrape at 1000 + 39 * 15 = 1585
NOW = 1_600.0


def edited(edit) -> bytes:
    saved = copy.deepcopy(SAVED)
    edit(saved)
    return json.dumps(saved).encode()  # json writes NaN and Infinity as they are


BAD_FILES = {
    "not UTF-8": (b"\xff\xfe\x00garbage", "malformed"),
    "empty": (b"", "malformed"),
    "cut short": (dumps(SAVED)[: len(dumps(SAVED)) // 2].encode(), "malformed"),
    "another program's JSON": (b'{"version": 3, "users": ["ann"]}', "malformed"),
    "a JSON list": (b"[1, 2, 3]", "malformed"),
    "a number": (b"42", "malformed"),
    "null": (b"null", "malformed"),
    "a wrong type deep inside": (edited(lambda s: s["slos"]["ttft"]["tiers"][1][2].__setitem__(0, "7")),
                                 "malformed"),
    "a bool for a bucket index": (edited(lambda s: s["slos"]["ttft"]["tiers"][0][0].__setitem__(0, True)),
                                  "malformed"),
    "NaN": (edited(lambda s: s["slos"]["availability"]["cumulative"].__setitem__(0, math.nan)), "malformed"),
    "a number past the float range": (dumps(SAVED).replace('"last_seen":1585.0', '"last_seen":1e999').encode(),
                                      "malformed"),
    "an integer past the float range": (edited(lambda s: s["slos"]["goodput"]["tiers"][2][1].__setitem__(
        0, 10 ** 400)), "malformed"),
    "a 5000-digit integer": (dumps(SAVED).replace('"last_seen":1585.0', '"last_seen":' + "9" * 5000).encode(),
                             "malformed"),
    "nested past the recursion limit": (b"[" * 100_000 + b"]" * 100_000, "malformed"),
    "a negative count": (edited(lambda s: s["slos"]["availability"]["cumulative"].__setitem__(1, -5.0)),
                         "malformed"),
    "a tier missing": (edited(lambda s: s["slos"]["availability"]["tiers"].pop()), "malformed"),
    "tier columns of unequal lengths": (edited(lambda s: s["slos"]["availability"]["tiers"][0][1].pop()),
                                        "malformed"),
    "a series list missing": (edited(lambda s: s["slos"]["availability"]["series"].pop()), "malformed"),
    "an SLO missing": (edited(lambda s: s["slos"].pop("queue-time")), "malformed"),
    "a label that is not a pair": (edited(lambda s: s["slos"]["ttft"]["series"][0][0][0].__setitem__(
        0, ["slo"])), "malformed"),
    "another spec's": (edited(lambda s: s.__setitem__("fingerprint", "0123456789abcdef")), "other_spec"),
    "older than the 30-day period": (edited(lambda s: s.update(first_seen=-3e6, last_seen=NOW - 31 * 86_400)),
                                     "too_old"),
}


def load(path: Path, now: float = NOW) -> tuple[SloTracker, dict[str, float]]:
    """A fresh tracker after taking up `path`, and the discard counts by reason."""
    tracker = SloTracker(SPEC)
    registry = CollectorRegistry()
    SloStateFile(path, tracker, registry).load(now)
    samples = parse_metrics(generate_latest(registry).decode())
    return tracker, {reason: metric(samples, "sidecar_slo_state_discarded_total", reason=reason)
                     for reason in DISCARD_REASONS}


def test_a_saved_state_is_taken_up_whole(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(dumps(SAVED))
    tracker, discarded = load(path)
    assert json_copy(tracker.snapshot()) == SAVED and not any(discarded.values())
    assert path.exists(), "a state taken up stays where it is"


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_state_file_is_ignored_with_one_line_counted_and_set_aside(tmp_path, caplog, case):
    content, reason = BAD_FILES[case]
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.INFO, logger="slo_sidecar.sidecar.slo_state"):
        tracker, discarded = load(path)
    assert json_copy(tracker.snapshot()) == FRESH, "the tracker starts afresh"
    assert discarded == {r: float(r == reason) for r in DISCARD_REASONS}
    assert [r.levelno for r in caplog.records] == [logging.WARNING], caplog.text
    assert f"not used ({reason})" in caplog.text
    aside = tmp_path / "state.json.discarded"
    assert not path.exists() and aside.read_bytes() == content, "kept for a post-mortem, out of the saves' way"


def test_a_state_file_past_the_size_limit_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(slo_state, "MAX_STATE_BYTES", 1000)
    path = tmp_path / "state.json"
    path.write_text(dumps(SAVED))  # a good state, but 1000 bytes is less than it takes
    tracker, discarded = load(path)
    assert json_copy(tracker.snapshot()) == FRESH and discarded["malformed"] == 1


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_an_unreadable_state_path_is_ignored_and_counted_without_blocking_the_start(tmp_path, caplog, kind):
    path = tmp_path / "state.json"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # without a writer, a plain open() would block the start for good
    with caplog.at_level(logging.INFO, logger="slo_sidecar.sidecar.slo_state"):
        tracker, discarded = load(path)
    assert json_copy(tracker.snapshot()) == FRESH
    assert discarded == {r: float(r == "unreadable") for r in DISCARD_REASONS}
    assert len(caplog.records) == 1 and "not used (unreadable)" in caplog.text


def test_temporary_files_of_interrupted_saves_are_removed_at_start(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(dumps(SAVED))
    leftovers = [tmp_path / ".state.json.ab_c12x9", tmp_path / ".state.json.zz0000_1"]
    others = [tmp_path / ".state.json.bak", tmp_path / "notes.txt", tmp_path / ".other.json.ab_c12x9"]
    for file in (*leftovers, *others):
        file.write_text("x")
    load(path)
    assert not any(file.exists() for file in leftovers)
    assert all(file.exists() for file in others), "only names write_atomically's temporary files take"


# --- restore(): all or nothing, for any input -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=16)


@st.composite
def mutated_snapshots(draw) -> object:
    """A real snapshot with one value replaced, one entry removed or one item added, somewhere."""
    root = copy.deepcopy(SAVED)
    parent, key, node = None, None, root
    while isinstance(node, (dict, list)) and node and draw(st.integers(0, 5)) > 0:
        key = draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
        parent, node = node, node[key]
    action = draw(st.sampled_from(["replace", "remove", "append"]))
    if parent is None:
        return draw(json_values)
    if action == "remove":
        del parent[key]
    elif action == "append" and isinstance(node, list):
        node.append(draw(json_values))
    else:
        parent[key] = draw(json_values | st.sampled_from([0, -1, 1.5, 1e308, 10 ** 400, math.nan, math.inf, True]))
    return root


shaped_like_a_state = st.fixed_dictionaries({
    "fingerprint": st.just(spec_fingerprint(SPEC)),
    "first_seen": json_values, "last_seen": json_values, "start_time": json_values,
    "slos": st.dictionaries(st.sampled_from([slo.name for slo in SPEC.slos]), json_values),
})


def canonical(snapshot: dict) -> dict:
    """What a snapshot says, so that two can be compared: a series list as the mapping it stands for."""
    return {**{key: snapshot[key] for key in ("fingerprint", "first_seen", "last_seen", "start_time")},
            "slos": {name: {"cumulative": state["cumulative"], "tiers": state["tiers"],
                            "series": [{json.dumps(labels): value for labels, value in series}
                                       for series in state["series"]]}
                     for name, state in snapshot["slos"].items()}}


@PROPERTY
@given(json_values | shaped_like_a_state | mutated_snapshots())
def test_restore_takes_a_snapshot_whole_or_leaves_the_tracker_exactly_as_it_was(saved):
    tracker = tracker_with_history(start=5_000.0, scrapes=7, step=40.0, rate=3.0)  # not SAVED's history
    before = json_copy(tracker.snapshot())
    given_copy = copy.deepcopy(saved)
    discarded = tracker.restore(saved, NOW)
    assert saved == given_copy or saved != saved, "restore() changed its argument"  # (NaN != NaN)
    after = json_copy(tracker.snapshot())
    if discarded is None:
        assert canonical(after) == canonical(saved)
    else:
        assert discarded.reason in DISCARD_REASONS
        assert after == before


@PROPERTY
@given(st.data())
def test_any_cut_of_a_saved_file_is_discarded_and_the_tracker_starts_afresh(tmp_path_factory, data):
    text = dumps(SAVED).encode()
    cut = data.draw(st.integers(0, len(text) - 1))
    path = tmp_path_factory.mktemp("cut") / "state.json"
    path.write_bytes(text[:cut])
    tracker, discarded = load(path)
    assert discarded["malformed"] == 1 and json_copy(tracker.snapshot()) == FRESH


counter_values = st.floats(0, 1e12) | st.sampled_from([math.nan, math.inf, -math.inf, -3.0])


@PROPERTY
@given(st.lists(st.tuples(st.floats(0.0, 700.0), st.lists(counter_values, min_size=4, max_size=4),
                          st.sampled_from([None, 1.0, 2.0])), min_size=1, max_size=30))
def test_what_the_tracker_saves_it_takes_back_whole_whatever_the_engine_exposed(scrapes):
    """NaN, Inf or a counter going down in the engine's series must not make the tracker's own state
    one that restore() refuses (or one that poisons every window for good)."""
    tracker, t = SloTracker(SPEC), 10_000.0
    for step, (ok, failed, fast, slow), start_time in scrapes:
        t += step
        tracker.observe(scrape_samples(ok, failed, slow, fast), t, start_time)
    saved = json.loads(dumps(tracker.snapshot()))
    again = SloTracker(SPEC)
    assert again.restore(saved, t) is None
    assert canonical(json_copy(again.snapshot())) == canonical(saved)
    assert again.states(t + 5) == tracker.states(t + 5)
    for tracked in tracker.slos:
        assert all(math.isfinite(v) and v >= 0 for v in tracked.cumulative)


# --- saving: a failure is counted, the old file stays whole ---------------------------------------

def save_errors(registry: CollectorRegistry) -> float:
    return metric(parse_metrics(generate_latest(registry).decode()), "sidecar_slo_state_save_errors_total")


def test_failed_saves_are_counted_logged_once_per_streak_and_keep_the_old_file(tmp_path, monkeypatch, caplog):
    path = tmp_path / "state.json"
    path.write_text("the old file")
    registry = CollectorRegistry()
    state = SloStateFile(path, tracker_with_history(), registry)

    def no_space(*args):
        raise OSError(28, "No space left on device")

    caplog.set_level(logging.INFO, logger="slo_sidecar.sidecar.slo_state")
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", no_space)  # the rename of write_atomically, after its write
        for _ in range(3):
            state.save()
    assert save_errors(registry) == 3
    assert path.read_text() == "the old file" and sorted(os.listdir(tmp_path)) == ["state.json"]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"cannot save the SLO state to {path}"]
    state.save()
    assert json.loads(path.read_text()) == json_copy(state.tracker.snapshot())
    assert save_errors(registry) == 3
    assert caplog.records[-1].getMessage() == f"SLO state saved again to {path} after 3 failed saves"


SAVE_UNDER_A_SIZE_LIMIT = """
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from prometheus_client import CollectorRegistry
from slo_sidecar.sidecar.slo_state import SloStateFile
from slo_sidecar.sidecar.slo_tracker import SloTracker
from tests.test_sidecar_faults import SPEC, tracker_with_history
path = Path(sys.argv[2])
state = SloStateFile(path, tracker_with_history(scrapes=400), CollectorRegistry())
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
state.save()  # the file would be larger than the limit: the write fails part-way with EFBIG
print(json.dumps({"errors": state.failed_saves, "files": sorted(os.listdir(path.parent))}))
"""


def test_a_save_cut_short_by_a_full_disk_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    """A real short write: the file size limit makes write() fail part-way (EFBIG), as a full disk does."""
    path = tmp_path / "state.json"
    old = dumps(SAVED)
    path.write_text(old)
    limit = 4096
    result = subprocess.run([sys.executable, "-c", SAVE_UNDER_A_SIZE_LIMIT, str(REPO), str(path), str(limit)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"errors": 1, "files": ["state.json"]}, result.stderr
    assert path.read_text() == old


# --- the real process: a full disk, and kills at random moments -----------------------------------

def engine_body(series: int) -> str:
    """The captured vLLM exposition, and the engine's SLI counters over many label sets (~140 bytes of
    state file each)."""
    lines = [f'slo_engine_http_requests_total{{code="{200 if i % 9 else 500}",endpoint="/v1/completions",'
             f'model_name="tiny-llama",client="client-{i:04d}"}} {i * 3}.0' for i in range(series)]
    lines += [f'slo_engine_slo_requests_total{{slo="ttft",good="{str(i % 4 > 0).lower()}",'
              f'client="client-{i:04d}"}} {i}.0' for i in range(series // 4)]
    return VLLM_EXPOSITION.read_text() + "\n".join(lines) + "\n"


@pytest.fixture
def engine(request):
    server = ExpositionServer(engine_body(getattr(request, "param", 400))).start()
    yield server
    server.stop()


def sidecar_args(state: Path, interval_s: str) -> tuple[str, ...]:
    return ("--engine-interval-s", "0.1", "--probe-interval-s", "0", "--slo-state-file", str(state),
            "--slo-state-interval-s", interval_s)


def scrape(sidecar: SidecarProcess) -> dict:
    status, body = http_get(sidecar.url + "/metrics")
    assert status == 200
    return parse_metrics(body.decode())


def wait_for(condition, timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def temporary_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".state.json.")]


def accepted(path: Path) -> bool:
    """Whether a fresh tracker takes up the file whole (it was saved moments ago)."""
    return SloTracker(SPEC).restore(json.loads(path.read_text()), time.time()) is None


def test_a_full_disk_fails_the_saves_not_the_sidecar(tmp_path, engine):
    state = tmp_path / "state.json"
    log = tmp_path / "sidecar.log"
    with SidecarProcess(log, engine.url, *sidecar_args(state, "0.1")).start() as sidecar:
        sidecar.wait_ready()
        wait_for(lambda: state.exists() and state.stat().st_size > 30_000, what="a first save of ~40 KB")
        assert metric(scrape(sidecar), "sidecar_slo_state_save_errors_total") == 0
        # From now on a write past 16 KB fails with EFBIG, as on a full disk (Python ignores SIGXFSZ).
        # The state file is larger, so every save fails; the log file stays well under the limit.
        resource.prlimit(sidecar.process.pid, resource.RLIMIT_FSIZE, (16_384, resource.RLIM_INFINITY))
        wait_for(lambda: metric(scrape(sidecar), "sidecar_slo_state_save_errors_total") >= 3, what="3 failed saves")
        kept, failed = state.read_bytes(), metric(scrape(sidecar), "sidecar_slo_state_save_errors_total")
        time.sleep(0.5)  # a few more tries
        samples = scrape(sidecar)
        assert metric(samples, "sidecar_slo_state_save_errors_total") > failed, "each failed try counts"
        assert metric(samples, "slo_objective_ratio", slo="availability") == 0.999, "SLO families still served"
        assert metric(samples, "sidecar_engine_up") == 1
        assert state.read_bytes() == kept and accepted(state), "the last good file stays whole"
        # A failed write removes its temporary file: at most the one of a save in flight (every 0.1 s) is
        # there when we look, and none outlives its save (names differ per save; a fresh clone once caught
        # one mid-write with a single look).
        first = temporary_files(tmp_path)
        time.sleep(0.3)
        second = temporary_files(tmp_path)
        assert len(first) <= 1 and len(second) <= 1 and not set(first) & set(second), (first, second)
        assert sidecar.process.poll() is None

        resource.prlimit(sidecar.process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        wait_for(lambda: state.read_bytes() != kept, what="a save once the disk has room")
        errors = metric(scrape(sidecar), "sidecar_slo_state_save_errors_total")
        time.sleep(0.4)
        assert metric(scrape(sidecar), "sidecar_slo_state_save_errors_total") == errors, "saves succeed again"
        assert sidecar.stop() == 0
    assert accepted(state)
    lines = log.read_text().splitlines()
    assert len([line for line in lines if "cannot save the SLO state" in line]) == 1, lines
    assert len([line for line in lines if "SLO state saved again" in line]) == 1, lines


KILLS = 20


def kill_while_saving(directory: Path, timeout_s: float) -> None:
    """Return as soon as a save's temporary file exists (the dangerous moment), or after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not temporary_files(directory) and time.monotonic() < deadline:
        pass  # a tight loop: a save's temporary file lives for about a millisecond


@pytest.mark.parametrize("engine", [3000], indirect=True)  # a state file of ~400 KB: saves take a while
def test_a_sidecar_killed_at_any_moment_leaves_a_state_file_it_takes_up_again(tmp_path, engine):
    """SIGKILL while the state is saved every 50 ms, at random moments and the moment a save has its
    temporary file: after each kill the file is absent (before the first save) or whole, old or new,
    at most one temporary file is left, and the next sidecar takes the file up."""
    state = tmp_path / "state.json"
    moments = random.Random(20_260_101)
    seen = {"absent": 0, "whole": 0, "killed mid-save": 0}
    for kill in range(KILLS):
        sidecar = SidecarProcess(tmp_path / f"sidecar-{kill}.log", engine.url, *sidecar_args(state, "0.05"))
        try:
            sidecar.start().wait_ready()
            if kill % 2:
                kill_while_saving(tmp_path, timeout_s=1.0)
            else:
                time.sleep(moments.uniform(0.0, 0.5))
        finally:
            sidecar.kill_group()
        log = sidecar.log_path.read_text()
        assert "not used" not in log and "Traceback" not in log, log
        if state.exists():
            assert accepted(state), f"kill {kill} left a state file that is not taken up"
            seen["whole"] += 1
        else:
            seen["absent"] += 1
        leftovers = temporary_files(tmp_path)
        assert len(leftovers) <= 1, f"temporary files pile up: {leftovers}"
        seen["killed mid-save"] += len(leftovers)
    assert seen["whole"] >= KILLS - 2, seen  # each run lasts long enough to save, bar the unlucky first
    assert seen["killed mid-save"] >= 1, f"no kill landed inside a save: the test proved little ({seen})"
    print(f"after {KILLS} kills: {seen}")
