"""`validate --model NAME[=WEIGHT]`: the load spread over tenants by weight, and each tenant judged on its own
requests and counters against the SLOs that apply to it. Pure pieces and a stub server: no engine here (the
real-engine run is in test_validate_gate.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from itertools import islice

import pytest
from aiohttp import web

from slo_sidecar.app.cli import build_parser
from slo_sidecar.app.gate import judge, report, scoped_to_tenant, table, tenant_slos, tenant_summaries, \
    tenant_verdicts, verdict, with_matcher
from slo_sidecar.app.loadgen import LoadSettings, RequestResult, spread, weighted_order
from slo_sidecar.app.validate import gate, settings_from
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from slo_sidecar.spec.model import EventSum, Matcher, Selection, Sli, Spec
from tests.helpers import REPO
from tests.threaded_server import ThreadedServer

SPEC = load_spec(str(DEFAULT_SPEC))


# --- spreading the load -------------------------------------------------------------------------------

def test_weighted_order_interleaves_tenants_in_proportion_to_their_weights():
    assert list(islice(weighted_order([("a", 3), ("b", 1)]), 8)) == list("aabaaaba")
    assert list(islice(weighted_order([("a", 2), ("b", 1)]), 6)) == list("abaaba")
    assert list(islice(weighted_order([("a", 1), ("b", 1), ("c", 1)]), 6)) == list("abcabc")
    # Fractional weights, in exact arithmetic: 0.5 : 1.5 is 1 : 3 (a tie goes to the first listed).
    assert list(islice(weighted_order([("a", 0.5), ("b", 1.5)]), 8)) == list("babbbabb")
    assert list(islice(weighted_order([("only", 7)]), 3)) == ["only"] * 3


def test_spread_gives_exact_counts():
    assert spread([("a", 3), ("b", 1)], 8) == {"a": 6, "b": 2}
    assert spread([("a", 3), ("b", 1)], 100) == {"a": 75, "b": 25}
    assert spread([("a", 0.2), ("b", 0.3), ("c", 0.5)], 1000) == {"a": 200, "b": 300, "c": 500}
    assert spread([("a", 1), ("b", 1)], 7) == {"a": 4, "b": 3}  # a part cycle: the first listed first
    assert spread([("a", 1), ("b", 2)], 0) == {"a": 0, "b": 0}


def test_weighted_order_refuses_no_tenants_or_a_weight_that_is_not_positive():
    with pytest.raises(ValueError):
        next(weighted_order([]))
    with pytest.raises(ValueError):
        next(weighted_order([("a", 1), ("b", 0)]))


# --- the per-tenant matcher ---------------------------------------------------------------------------

def test_scoped_to_tenant_adds_the_model_matcher_to_every_selection_once():
    availability = SPEC.slos[0]
    scoped = scoped_to_tenant(availability, "medical")
    assert scoped.sli.total.terms[0][1].promql() == ('slo_engine_http_requests_total{endpoint=~"/v1/completions|'
                                                     '/v1/chat/completions",code=~"2..|5..|429",model="medical"}')
    assert all(Matcher("model", "=", "medical") in selection.matchers
               for events in (scoped.sli.errors, scoped.sli.total) for _, selection in events.terms)
    assert scoped.sli.total.separate_sources == availability.sli.total.separate_sources
    assert [sign for sign, _ in scoped.sli.errors.terms] == [sign for sign, _ in availability.sli.errors.terms]
    assert scoped_to_tenant(scoped, "medical") == scoped  # already there: not added twice
    assert "model" not in availability.sli.total.terms[0][1].promql()  # the spec's SLO is left as it was
    assert (scoped.name, scoped.objective, scoped.key) == (availability.name, availability.objective, "availability")


def test_with_matcher_keeps_signs_and_a_promql_only_sli_is_left_alone():
    count = Selection("h_count", (Matcher("job", "=", "x"),))
    within = Selection("h_bucket", (Matcher("le", "=", "0.5"),))
    events = with_matcher(EventSum(((1, count), (-1, within))), Matcher("model", "=", "legal"))
    assert [(sign, selection.promql()) for sign, selection in events.terms] == [
        (1, 'h_count{job="x",model="legal"}'), (-1, 'h_bucket{le="0.5",model="legal"}')]
    assert with_matcher(None, Matcher("model", "=", "legal")) is None
    raw = replace(SPEC.slos[1], sli=Sli("raw", None, None, "raw", raw_error_ratio="vector(0)"))
    assert scoped_to_tenant(raw, "legal") is raw


def sliced_spec() -> Spec:
    """The default spec with ttft sliced by model, as `slice_by: [model]` expands it: medical's slice at
    99.5%, every other tenant's at 95%, each slice's selections scoped to its tenants."""
    ttft = SPEC.slos[1]

    def piece(value: str, objective: float, matcher: Matcher):
        add = lambda events: with_matcher(events, matcher)  # noqa: E731
        return replace(ttft, objective=objective, slice={"model": value},
                       sli=replace(ttft.sli, errors=add(ttft.sli.errors), total=add(ttft.sli.total)))

    slices = (piece("medical", 99.5, Matcher("model", "=", "medical")),
              piece("other", 95, Matcher("model", "!~", "medical")))
    return replace(SPEC, slos=(SPEC.slos[0], *slices, *SPEC.slos[2:]))


def test_tenant_slos_pick_the_tenants_slice_or_the_other_one():
    spec = sliced_spec()
    assert [slo.key for slo in tenant_slos(SPEC, "medical")] == [slo.name for slo in SPEC.slos if slo.sli.timeslices is None]
    assert [slo.key for slo in tenant_slos(spec, "medical")] == ["availability", "ttft/medical", "e2e-latency",
                                                                  "queue-time", "goodput", "correctness"]
    legal = {slo.key: slo for slo in tenant_slos(spec, "legal")}
    assert list(legal) == ["availability", "ttft/other", "e2e-latency", "queue-time", "goodput", "correctness"]
    assert legal["ttft/other"].objective == 95
    # the other slice, judged for one tenant: its own selection, and that tenant's alone
    assert legal["ttft/other"].sli.total.terms[0][1].promql() == \
        'slo_engine_slo_requests_total{slo="ttft",model!~"medical",model="legal"}'
    no_other = replace(spec, slos=tuple(slo for slo in spec.slos if slo.slice.get("model") != "other"))
    assert "ttft/other" not in [slo.key for slo in tenant_slos(no_other, "legal")]  # not covered: not judged


# --- judging each tenant ------------------------------------------------------------------------------

def exposition(http: dict[str, tuple[int, int]], slo: dict[str, tuple[int, int]], label: bool = True) -> str:
    """The engine's two exact counters: http {model: (2xx, 503)}; the SLO counter {model: (good, bad)} for
    ttft, every other judged SLO all good; with `label` False, as an engine from before tenants (summed)."""
    lines = ["# TYPE slo_engine_http_requests_total counter"]
    if not label:
        http = {"": tuple(map(sum, zip(*http.values())))}
        slo = {"": tuple(map(sum, zip(*slo.values())))}

    def labels(model: str, **others: str) -> str:
        pairs = {**others, **({"model": model} if label else {})}
        return ",".join(f'{k}="{v}"' for k, v in pairs.items())

    for model, (good, bad) in http.items():
        lines += [f'slo_engine_http_requests_total{{{labels(model, endpoint="/v1/completions", code="200")}}} {good}',
                  f'slo_engine_http_requests_total{{{labels(model, endpoint="/v1/completions", code="503")}}} {bad}']
    lines.append(f'slo_engine_http_requests_total{{{labels("", endpoint="/health", code="503")}}} 1000')
    lines.append("# TYPE slo_engine_slo_requests_total counter")
    for model, (good, bad) in slo.items():
        for name in ("ttft", "e2e-latency", "queue-time", "goodput"):
            lines += [f'slo_engine_slo_requests_total{{{labels(model, slo=name, good="true")}}} '
                      f'{good if name == "ttft" else good + bad}',
                      f'slo_engine_slo_requests_total{{{labels(model, slo=name, good="false")}}} '
                      f'{bad if name == "ttft" else 0}']
    return "\n".join(lines) + "\n"


# Before and after a run, worked out by hand. Between them:
#   medical: 100 answered, no 503; ttft 99 good, 1 missed (99%)
#   legal:    98 answered, 2 503s; ttft all 100 good (the engine's judgement counts a 5xx only in
#             availability here: these samples are synthetic)
BEFORE = exposition({"medical": (10, 0), "legal": (10, 1)}, {"medical": (10, 0), "legal": (10, 0)})
AFTER = exposition({"medical": (110, 0), "legal": (108, 3)}, {"medical": (109, 1), "legal": (110, 0)})


def request(model: str, ttft: float = 0.05, status: int = 200) -> RequestResult:
    if status != 200:
        return RequestResult(status, 0.0, 0.01, error="engine", model=model)
    return RequestResult(200, 0.0, ttft + 0.08, ttft, [0.01] * 8, 9, 10, model=model)


# The client's view of the same run: medical 100 fast answers; legal 98 fast answers and two 500s.
RESULTS = [request("medical") for _ in range(100)] + [request("legal") for _ in range(98)] + \
    [request("legal", status=500)] * 2


def by_key(criteria) -> dict[tuple[str, str, str], object]:
    return {(c.tenant, c.slo, c.view): c for c in criteria}


def test_each_tenant_is_judged_on_its_own_counters_and_requests():
    _, criteria = judge(SPEC, RESULTS, 10.0, BEFORE, AFTER, ["medical", "legal"])
    got = by_key(criteria)
    assert {tenant for tenant, _, _ in got} == {"medical", "legal"}
    # medical: 100 of 100 answered (the 1000 /health 503s are not selected), ttft 99 of 100 at 99%: PASS
    assert got["medical", "availability", "server"].measured.startswith("100.00% of 100")
    assert got["medical", "availability", "server"].passed is True
    assert got["medical", "ttft", "server"].measured == "99.00% of 100" and got["medical", "ttft", "server"].passed
    assert got["medical", "availability", "client"].measured.startswith("100.00% of 100")
    # legal: 98 of 100 at 99.9%: FAIL on both views; ttft 100 of 100 on the server, 98 of 100 on the client
    # (a 500 misses every target there, as the engine judges): FAIL
    assert got["legal", "availability", "server"].measured == "98.00% of 100"
    assert got["legal", "availability", "server"].passed is False
    assert got["legal", "availability", "client"].passed is False
    assert got["legal", "ttft", "server"].passed is True
    assert got["legal", "ttft", "client"].measured.startswith("98.00% of 100")
    assert got["legal", "ttft", "client"].passed is False
    assert tenant_verdicts(criteria) == {"medical": True, "legal": False}
    assert not verdict(criteria, ["medical", "legal"])
    assert verdict([c for c in criteria if c.tenant == "medical"], ["medical"])


def test_without_tenants_every_event_is_judged_together_as_before():
    _, criteria = judge(SPEC, RESULTS, 10.0, BEFORE, AFTER)
    got = by_key(criteria)
    assert all(tenant == "" for tenant, _, _ in got)
    assert got["", "availability", "server"].measured == "99.00% of 200"  # 198 of 200: FAIL at 99.9%
    assert got["", "availability", "server"].passed is False
    assert got["", "ttft", "server"].measured == "99.50% of 200" and got["", "ttft", "server"].passed


def test_a_sliced_slo_judges_each_tenant_by_its_own_slice_and_objective():
    _, criteria = judge(sliced_spec(), RESULTS, 10.0, BEFORE, AFTER, ["medical", "legal"])
    got = by_key(criteria)
    # medical's slice asks 99.5%: 99 of 100 fails it
    assert got["medical", "ttft/medical", "server"].target == ">= 99.5% good"
    assert got["medical", "ttft/medical", "server"].measured == "99.00% of 100"
    assert got["medical", "ttft/medical", "server"].passed is False
    # legal is in the other slice at 95%: 100 of 100 on the server, 98 of 100 on the client, both pass
    assert got["legal", "ttft/other", "server"].measured == "100.00% of 100" and got["legal", "ttft/other", "server"].passed
    assert got["legal", "ttft/other", "client"].passed is True
    assert not any(slo.startswith("ttft/") and slo != "ttft/medical" for tenant, slo, _ in got if tenant == "medical")
    assert tenant_verdicts(criteria) == {"medical": False, "legal": False}  # legal's availability still fails


def test_an_engine_without_the_model_label_leaves_the_server_view_unjudged_per_tenant():
    before = exposition({"medical": (10, 0), "legal": (10, 1)}, {"medical": (10, 0), "legal": (10, 0)}, label=False)
    after = exposition({"medical": (110, 0), "legal": (108, 3)}, {"medical": (109, 1), "legal": (110, 0)},
                       label=False)
    _, criteria = judge(SPEC, RESULTS, 10.0, before, after, ["medical", "legal"])
    server = [c for c in criteria if c.view == "server"]
    assert len(server) == 2 * 6 and all(c.passed is None for c in server)  # correctness: not by load
    assert "slo_engine_http_requests_total has no model label" in by_key(criteria)["medical", "availability",
                                                                                   "server"].note
    assert "slo_engine_slo_requests_total has no model label" in by_key(criteria)["legal", "ttft", "server"].note
    assert tenant_verdicts(criteria) == {"medical": True, "legal": False}  # the client's view still judges


def test_a_tenant_with_nothing_judged_fails_the_run():
    _, criteria = judge(SPEC, RESULTS, 10.0, BEFORE, AFTER, ["medical", "finance"])
    assert all(c.passed is None for c in criteria if c.tenant == "finance")
    assert tenant_verdicts(criteria) == {"medical": True, "finance": False}
    assert not verdict(criteria, ["medical", "finance"])
    assert not verdict([c for c in criteria if c.tenant == "medical"], ["medical", "finance"])  # no criteria at all


def test_the_table_and_report_show_each_tenant_and_the_overall_verdict():
    tenants = ["medical", "legal"]
    summary, criteria = judge(SPEC, RESULTS, 10.0, BEFORE, AFTER, tenants)
    own = tenant_summaries(RESULTS, 10.0, tenants)
    assert (own["medical"].requests, own["legal"].requests, own["legal"].failed_by_status) == (100, 100, {"500": 2})
    text = table(summary, criteria, {"engine_rss_bytes": None}, own)
    lines = text.splitlines()
    assert lines[-1] == "FAIL"
    assert "medical: PASS" in lines and "legal: FAIL" in lines
    assert any(line.startswith("tenant legal: 100 sent, 98 ok, failed: 500 x2") for line in lines), text
    assert sum(line.startswith("tenant ") and "SLO" in line for line in lines) == 2  # a table per tenant
    row = next(line for line in lines if line.startswith("legal ") and " availability " in line and " server " in line)
    assert "98.00% of 100" in row and row.split("  (")[0].endswith("FAIL")
    document = report({"url": "http://x"}, "medical,legal", summary, criteria, {}, own)
    assert document["passed"] is False
    assert [(t["name"], t["passed"], t["summary"]["requests"]) for t in document["tenants"]] == [
        ("medical", True, 100), ("legal", False, 100)]
    assert {c["tenant"] for c in document["criteria"]} == {"medical", "legal"}
    json.dumps(document, allow_nan=False)
    # no tenants: one table, no tenant lines, the report as before
    summary, criteria = judge(SPEC, RESULTS, 10.0, BEFORE, AFTER)
    assert not any(line.startswith("tenant") for line in table(summary, criteria, {}).splitlines())
    assert "tenants" not in report({}, "tiny-llama", summary, criteria, {})


# --- the arguments ------------------------------------------------------------------------------------

def parse(*args: str):
    return build_parser().parse_args(["validate", "--url", "http://127.0.0.1:1", *args])


def test_model_is_repeatable_with_optional_weights():
    args = parse("--model", "medical=3", "--model", "legal", "--model", "org/model=0.5")
    assert args.model == [("medical", 3.0), ("legal", 1.0), ("org/model", 0.5)]
    assert settings_from(args).tenants == (("medical", 3.0), ("legal", 1.0), ("org/model", 0.5))
    assert parse().model is None and settings_from(parse()).tenants == ()


@pytest.mark.parametrize("values, reason", [
    (["a=0"], "the weight of 'a' must be a finite number > 0, got '0'"),
    (["a=-2"], "the weight of 'a' must be a finite number > 0, got '-2'"),
    (["a=heavy"], "the weight of 'a' must be a finite number > 0, got 'heavy'"),
    (["a=nan"], "got 'nan'"),
    (["a=inf"], "got 'inf'"),
    (["a="], "got ''"),
    (["=2"], "expected NAME or NAME=WEIGHT, got '=2'"),
    ([""], "expected NAME or NAME=WEIGHT, got ''"),
    (["a", "a=2"], "'a' is named twice"),
])
def test_a_bad_model_value_exits_2_naming_the_flag_and_why(values, reason, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(*(arg for value in values for arg in ("--model", value)))
    assert exit_.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("slo-sidecar validate: error: argument --model: ") and reason in error, error


def test_a_bad_model_value_is_one_line_not_a_traceback():
    result = subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "validate", "--url", "http://127.0.0.1:1",
                             "--model", "medical=-1", "--report", ""], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith("argument --model: the weight of 'medical' must be a finite "
                                                   "number > 0, got '-1'")


# --- the load, against a stub that records what it was asked ---------------------------------------------

class ModelsStub(ThreadedServer):
    """/v1/models and a non-streamed /v1/completions that answers at once, recording each request's model."""

    def __init__(self, served: tuple[str, ...]):
        super().__init__()
        self.served = served
        self.seen: list[str] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._complete)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": name} for name in self.served]})

    async def _complete(self, request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        self.seen.append(model)
        return web.json_response({"model": model, "choices": [{"index": 0, "text": "ok"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 2}})


@pytest.fixture
def stub():
    server = ModelsStub(("tiny-llama", "medical", "legal")).start()
    yield server
    server.stop()


def settings(stub: ModelsStub, tenants, **others) -> LoadSettings:
    return LoadSettings(stub.url, stream=False, tenants=tuple(tenants), **others)


def test_the_load_sends_each_tenant_its_share_in_order(stub, tmp_path, capsys):
    tenants = [("medical", 3), ("legal", 1)]
    assert gate(settings(stub, tenants, concurrency=1, requests=8), SPEC, tmp_path / "r.json", False) == 0
    assert stub.seen == ["medical", "medical", "legal", "medical"] * 2
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] and data["model"] == "medical,legal"
    assert [(t["name"], t["summary"]["requests"]) for t in data["tenants"]] == [("medical", 6), ("legal", 2)]
    assert data["settings"]["tenants"] == [["medical", 3], ["legal", 1]]
    out = capsys.readouterr()
    assert "over medical x3, legal x1" in out.err and "medical: PASS" in out.out

    stub.seen.clear()
    assert gate(settings(stub, tenants, concurrency=3, requests=100), SPEC, None, False) == 0
    assert Counter(stub.seen) == {"medical": 75, "legal": 25}  # several at a time: still the exact counts


def test_a_tenant_the_server_does_not_serve_exits_2_naming_it(stub, capsys):
    assert gate(settings(stub, [("medical", 1), ("finance", 1)], requests=2), SPEC, None, False) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "--model finance: not served there (it serves tiny-llama, medical, legal)" in error, error
    assert stub.seen == []  # checked before any load
