"""Golden probes' pure parts: the set, the score read from vLLM's prompt_logprobs, the baseline file, the verdict,
and the spec's `correctness` section. Against a real engine: tests/test_golden_engine.py."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest

from slo_sidecar.spec.golden import (
    GoldenBaseline,
    GoldenError,
    ItemVerdict,
    continuation_score,
    judge_scores,
    load_golden_set,
    parse_golden_set,
    teacher_forcing_body,
)
from slo_sidecar.spec.load import SpecError, parse_spec
from slo_sidecar.spec.model import Correctness

SET = "- prompt: 'a b'\n  continuation: ' c d'\n- prompt: 'e'\n  continuation: ' f'\n"


def test_the_embedded_set_loads_and_its_fingerprint_follows_its_items():
    embedded = load_golden_set()
    assert len(embedded.items) >= 8 and all(i.prompt and i.continuation for i in embedded.items)
    one = parse_golden_set(SET, "g.yaml")
    assert one.fingerprint == parse_golden_set(SET, "elsewhere.yaml").fingerprint  # the items, not the file
    assert one.fingerprint != parse_golden_set(SET.replace("' f'", "' g'"), "g.yaml").fingerprint


@pytest.mark.parametrize("text, reason", [
    ("prompt: x\n", "expected a non-empty list"),
    ("[]\n", "expected a non-empty list"),
    ("- {prompt: x}\n", "item 0: expected exactly the fields prompt and continuation"),
    ("- {prompt: x, continuation: y, weight: 2}\n", "item 0: expected exactly the fields"),
    ("- {prompt: x, continuation: y}\n- {prompt: '  ', continuation: y}\n", "item 1: prompt: expected a non-empty"),
    ("- {prompt: x, continuation: 3}\n", "item 0: continuation: expected a non-empty string"),
    ("- [unclosed\n", "not valid YAML"),
])
def test_a_bad_golden_set_names_the_file_the_item_and_the_reason(text, reason):
    with pytest.raises(GoldenError) as caught:
        parse_golden_set(text, "golden.yaml")
    assert str(caught.value).startswith("golden.yaml: ") and reason in str(caught.value)


def answer(logprobs: list[float | None], ids: list[int]) -> dict:
    """A completions answer as vLLM gives it with prompt_logprobs=0: per prompt token, its own logprob."""
    entries = [None if lp is None else {str(token): {"logprob": lp, "rank": 1, "decoded_token": "t"}}
               for lp, token in zip(logprobs, ids)]
    return {"choices": [{"text": "x", "prompt_logprobs": entries}]}


def test_the_score_is_the_mean_log_probability_of_the_continuation_tokens_only():
    prompt, continuation = [1, 40, 41], [7, 9]
    body = teacher_forcing_body("m", prompt, continuation)
    assert body["prompt"] == [1, 40, 41, 7, 9] and body["max_tokens"] == 1 and body["prompt_logprobs"] == 0
    # The prompt's own tokens (-0.5, -8.0) do not count; the continuation's -1.0 and -3.0 average to -2.0.
    assert continuation_score(answer([None, -0.5, -8.0, -1.0, -3.0], body["prompt"]), 3, continuation) == -2.0
    nan = continuation_score(answer([None, -0.5, -8.0, math.nan, -3.0], body["prompt"]), 3, continuation)
    assert math.isnan(nan)


@pytest.mark.parametrize("broken, reason", [
    ({"choices": []}, r"no choices\[0\]\.prompt_logprobs"),
    ({"choices": [{"prompt_logprobs": None}]}, "expected 5 prompt_logprobs entries"),
    (answer([None, -1.0, -1.0, -1.0], [1, 40, 41, 7]), "expected 5 prompt_logprobs entries, got 4"),
    (answer([None, -1.0, -1.0, -1.0, -1.0], [1, 40, 41, 7, 8]), "lacks token 9's logprob"),
])
def test_an_answer_that_cannot_be_scored_says_why(broken, reason):
    with pytest.raises(GoldenError, match=reason):
        continuation_score(broken, 3, [7, 9])


def test_the_baseline_round_trips_and_is_refused_for_another_set():
    golden = parse_golden_set(SET, "g.yaml")
    baseline = GoldenBaseline("tiny-llama", golden.fingerprint, (-2.5, -7.25))
    assert GoldenBaseline.from_json(baseline.to_json(), "b.json") == baseline
    baseline.check_matches(golden, "b.json")
    with pytest.raises(GoldenError, match="b.json: recorded on another golden set"):
        baseline.check_matches(parse_golden_set(SET.replace("' f'", "' g'"), "g.yaml"), "b.json")
    for text, reason in [("{", "not JSON"), ('{"version": "v0"}', "version: expected"),
                         (baseline.to_json().replace("-7.25", "NaN"), "scores: expected a non-empty list of finite"),
                         (baseline.to_json().replace('"tiny-llama"', '""'), "model: expected a non-empty string")]:
        with pytest.raises(GoldenError, match=f"b.json: {reason}"):
            GoldenBaseline.from_json(text, "b.json")


def test_an_item_is_good_within_the_tolerance_and_never_when_nan():
    baseline = GoldenBaseline("m", "f", (-2.0, -2.0, -2.0, -2.0))
    verdicts = judge_scores(baseline, [-2.25, -1.75, -2.2501, math.nan], 0.25)  # exact in binary: -2 +- 1/4
    assert [v.good for v in verdicts] == [True, True, False, False]
    assert verdicts[2].shift == pytest.approx(-0.2501)
    assert not ItemVerdict(0, -2.0, -math.inf, 0.25).good


SPEC = "version: slo-sidecar/v1\nservice: llm\n{correctness}slos:\n" \
       "  - {{name: a, objective: 99, sli: {{availability: {{errors: {{metric: e_total}}, total: {{metric: t_total}}}}}}}}\n"


def test_the_spec_correctness_section():
    assert parse_spec(SPEC.format(correctness=""), "/etc/slo/slo.yaml").correctness == Correctness()
    spec = parse_spec(SPEC.format(correctness="correctness: {golden_set: golden.yaml, tolerance: 0.05}\n"),
                      "/etc/slo/slo.yaml")
    assert spec.correctness == Correctness("/etc/slo/golden.yaml", 0.05)  # found beside the spec
    spec = parse_spec(SPEC.format(correctness="correctness: {interval_s: 5, bad_in_a_row: 3, quarantine: true}\n"),
                      "slo.yaml")
    assert spec.correctness == Correctness(interval_s=5.0, bad_in_a_row=3, quarantine=True)
    for section, reason in [("correctness: {tolerance: 0}\n", "correctness.tolerance: expected a number > 0"),
                            ("correctness: {interval_s: -1}\n", "correctness.interval_s: expected a number"),
                            ("correctness: {bad_in_a_row: 0}\n", "correctness.bad_in_a_row: expected a whole"),
                            ("correctness: {bad_in_a_row: 1.5}\n", "correctness.bad_in_a_row"),
                            ("correctness: {quarantine: 'yes'}\n", "correctness.quarantine: expected true or false"),
                            ("correctness: {tolerance: x}\n", "correctness.tolerance"),
                            ("correctness: {interval: 5}\n", "interval"),
                            ("correctness: {golden_set: 3}\n", "correctness.golden_set")]:
        with pytest.raises(SpecError, match=reason):
            parse_spec(SPEC.format(correctness=section), "slo.yaml")


def test_the_prober_quarantines_after_bad_in_a_row_and_one_good_probe_lifts_it():
    from slo_sidecar.sidecar.golden_probe import GoldenProber
    from slo_sidecar.sidecar.slo_tracker import SloTracker
    from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec

    golden = parse_golden_set(SET, "g.yaml")
    baseline = GoldenBaseline("m", golden.fingerprint, (-2.0, -3.0))
    tracker = SloTracker(load_spec(str(DEFAULT_SPEC)))

    def prober(quarantine: bool) -> GoldenProber:
        return GoldenProber("http://127.0.0.1:1", "", golden, baseline,
                            Correctness(tolerance=0.25, bad_in_a_row=2, quarantine=quarantine), tracker)

    on, off = prober(True), prober(False)
    steps = [(0, -2.0, False), (1, -3.5, False), (0, -1.5, True), (1, -3.0, False), (0, math.nan, False),
             (1, -2.0, True), (0, -2.1, False)]  # (item, score, quarantined after it, with quarantine on)
    for index, score, quarantined in steps:
        for each in (on, off):
            each.record(ItemVerdict(index, baseline.scores[index], score, 0.25))
        assert (on.quarantined, off.quarantined) == (quarantined, False), (index, score)
    assert on.counts == {"good": 3, "bad": 4} and on.bad_in_a_row == 0
    families = {f.name: f for f in on.families({"namespace": "ns", "model_name": "m"})}
    counted = {s.labels["result"]: s.value for s in families["slo_golden_probes"].samples}
    assert counted == {"good": 3.0, "bad": 4.0}
    shifts = {s.labels["item"]: s.value for s in families["slo_golden_score_shift"].samples}
    assert shifts == {"0": pytest.approx(-0.1), "1": 1.0}
    assert [s.value for s in families["slo_quarantined"].samples] == [0.0]


# --- The correctness SLI in Prometheus's rule engine -------------------------------------------------------

CORRECTNESS_SPEC = """version: slo-sidecar/v1
service: llm
slos:
  - name: correctness
    objective: 99
    sli:
      correctness: {}
"""
# Three pods for 20 minutes at steady rates per second (scaled up from real probes, so that every rate is a whole
# number and the ratios exact in floating point): pod a has 5 good and 1 bad golden probes and 4 requests vLLM
# found NaN logits in; pod b (a stock vLLM that does not count NaN logits) 5 good and 1 bad probes only; pod c
# 5 good and 1 bad probes and one double-bit ECC (XID 48) and one contained ECC (XID 94) event on its GPUs. The
# sidecar serves every data-corrupting XID at 0 from the start: a and b's zeros add nothing.
CORRECTNESS_TEST = """\
rule_files: [slo-correctness.rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'slo_golden_probes_total{namespace="ns",model_name="a",result="good"}'
        values: '0+300x20'
      - series: 'slo_golden_probes_total{namespace="ns",model_name="a",result="bad"}'
        values: '0+60x20'
      - series: 'vllm:corrupted_requests_total{namespace="ns",model_name="a",engine="0"}'
        values: '0+240x20'
      - series: 'slo_golden_probes_total{namespace="ns",model_name="b",result="good"}'
        values: '0+300x20'
      - series: 'slo_golden_probes_total{namespace="ns",model_name="b",result="bad"}'
        values: '0+60x20'
      - series: 'slo_gpu_data_corrupting_xids_total{namespace="ns",model_name="a",xid="48"}'
        values: '0x20'
      - series: 'slo_gpu_data_corrupting_xids_total{namespace="ns",model_name="b",xid="94"}'
        values: '0x20'
      - series: 'slo_golden_probes_total{namespace="ns",model_name="c",result="good"}'
        values: '0+300x20'
      - series: 'slo_golden_probes_total{namespace="ns",model_name="c",result="bad"}'
        values: '0+60x20'
      - series: 'slo_gpu_data_corrupting_xids_total{namespace="ns",model_name="c",xid="48"}'
        values: '0+60x20'
      - series: 'slo_gpu_data_corrupting_xids_total{namespace="ns",model_name="c",xid="94"}'
        values: '0+60x20'
      - series: 'slo_gpu_data_corrupting_xids_total{namespace="ns",model_name="c",xid="95"}'
        values: '0x20'
    promql_expr_test:
      - expr: slo:sli_error:ratio_rate5m{sloth_slo="correctness"}
        eval_time: 20m
        exp_samples:
          - labels: '{__name__="slo:sli_error:ratio_rate5m", namespace="ns", model_name="a", {ids}}'
            value: {a}
          - labels: '{__name__="slo:sli_error:ratio_rate5m", namespace="ns", model_name="b", {ids}}'
            value: {b}
          - labels: '{__name__="slo:sli_error:ratio_rate5m", namespace="ns", model_name="c", {ids}}'
            value: {c}
"""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_the_correctness_sli_counts_bad_probes_corrupted_requests_and_gpu_xids(tmp_path):
    ids = 'sloth_id="llm-correctness", sloth_service="llm", sloth_slo="correctness", sloth_window="5m"'
    # Bad events over all events, per second: pod a (1 + 4) / (5 + 1 + 4); pod b, whose engine has no such
    # counter, 1 / (5 + 1); pod c (1 + 2) / (5 + 1 + 2).
    test = (CORRECTNESS_TEST.replace("{ids}", ids).replace("{a}", repr(5 / 10)).replace("{b}", repr(1 / 6))
            .replace("{c}", repr(3 / 8)))
    done = promtool_test_of_the_correctness_rules(tmp_path, test)
    assert done.returncode == 0, done.stdout + done.stderr


def promtool_test_of_the_correctness_rules(tmp_path, test: str) -> subprocess.CompletedProcess:
    """`promtool test rules` on a test file over the rules generated for CORRECTNESS_SPEC."""
    from slo_sidecar.alerts.render import render

    files = render(parse_spec(CORRECTNESS_SPEC, "slo.yaml"))
    (tmp_path / "slo-correctness.rules.yaml").write_text(files["slo-correctness.rules.yaml"])
    (tmp_path / "correctness.test.yaml").write_text(test)
    return subprocess.run(["promtool", "test", "rules", "correctness.test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


FAST_PAGE_TEST = """\
rule_files: [slo-correctness.rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'slo_golden_bad_in_a_row{namespace="ns",model_name="a"}'
        values: '0 0 1 2 3 0 0'
      - series: 'slo_golden_bad_in_a_row{namespace="ns",model_name="b"}'
        values: '0 1 0 1 0 1 0'
    alert_rule_test:
      - {eval_time: 2m, alertname: CorrectnessSLOGoldenProbesBad, exp_alerts: []}
      - eval_time: 3m
        alertname: CorrectnessSLOGoldenProbesBad
        exp_alerts:
          - exp_labels: {namespace: ns, model_name: a, severity: critical, sloth_severity: page, tier: page,
                         sloth_id: llm-correctness, sloth_service: llm, sloth_slo: correctness}
            exp_annotations: {summary: "llm (ns/a): answers that score unlike the model's baseline",
                              description: "2 golden probes in a row scored further than 0.001 nats/token from their recorded baseline (pages at 2): the pod answers, but wrong. Corrupted weights, a bad GPU or NaN logits.",
                              runbook_url: docs/runbooks/correctness.md,
                              dashboard_url: "/d/slo-sidecar-llm-slo?viewPanel=9"}
      - {eval_time: 5m, alertname: CorrectnessSLOGoldenProbesBad, exp_alerts: []}
"""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_two_bad_probes_in_a_row_page_at_once_and_one_alone_never(tmp_path):
    """`for: 0s` on bad_in_a_row >= 2: pod a pages at the minute its second bad probe in a row is seen (3m) and
    not before, and no longer once a probe is good (5m); pod b's bad probes never follow each other."""
    done = promtool_test_of_the_correctness_rules(tmp_path, FAST_PAGE_TEST)
    assert done.returncode == 0, done.stdout + done.stderr
