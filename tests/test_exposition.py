"""The sidecar's exposition reader agrees with prometheus_client's parser, and catches bad input."""

from __future__ import annotations

import math

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from slo_sidecar.sidecar.exposition import ExpositionError, ExpositionReader, SampleFilter, Scrape, parse
from tests.helpers import VLLM_EXPOSITION

VLLM_FAMILIES = [
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions", "vllm:request_success", "vllm:prompt_tokens", "vllm:generation_tokens",
    "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds", "vllm:cache_config_info",
]


def reference(text: str, families: list[str], parser=text_string_to_metric_families) -> list[tuple]:
    """What prometheus_client reads for the same families, as comparable tuples."""
    wanted = SampleFilter(families)
    found = []
    for family in parser(text):
        for sample in family.samples:
            if sample.name in wanted.names and not sample.name.endswith("_created"):
                found.append((sample.name, tuple(sorted(sample.labels.items())), sample.value))
    return found


def ours(text: str, families: list[str], openmetrics: bool = False) -> list[tuple]:
    return [(s.name, tuple(sorted(s.labels)), s.value) for s in parse(text, SampleFilter(families), openmetrics)]


def test_real_vllm_exposition_reads_like_prometheus_client():
    text = VLLM_EXPOSITION.read_text()
    expected = reference(text, VLLM_FAMILIES)
    assert len(expected) > 100
    assert sorted(ours(text, VLLM_FAMILIES)) == sorted(expected)


def test_escaped_and_awkward_label_values():
    text = (
        'm_total{a="plain",b="quote \\" inside",c="back\\\\slash",d="new\\nline"} 3\n'
        'm_total{a="brace } and , comma",b="hash # sign"} 4 1700000000000\n'
        'm_total{a="x",} 5\n'
        'm_total 6\n'
        'm_total{} 7\n'
    )
    assert ours(text, ["m"]) == reference(text, ["m"])
    values = [s.label("b") for s in parse(text, SampleFilter(["m"]))]
    assert values[:2] == ['quote " inside', "hash # sign"]


def test_special_values():
    text = 'g{x="1"} NaN\ng{x="2"} +Inf\ng{x="3"} -Inf\ng{x="4"} 1e-3\n'
    values = [s.value for s in parse(text, SampleFilter(["g"]))]
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 0.001]


def test_only_wanted_families_and_exact_names():
    text = ("# HELP vllm:num_requests_waiting waiting\n# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{engine="0"} 3.0\n'
            'vllm:num_requests_waiting_by_reason{reason="capacity"} 9.0\n'
            "other_metric 1\n")
    samples = parse(text, SampleFilter(["vllm:num_requests_waiting"]))
    assert [(s.name, s.value) for s in samples] == [("vllm:num_requests_waiting", 3.0)]


def test_openmetrics_with_exemplars_and_eof():
    text = ("# TYPE h histogram\n"
            'h_bucket{le="0.5"} 2 # {trace_id="4bf92f3577b34da6"} 0.3 1700000000.0\n'
            'h_bucket{le="+Inf"} 3\nh_count 3\nh_sum 1.5\n# EOF\n')
    assert ours(text, ["h"], openmetrics=True) == reference(text, ["h"], openmetrics_families)
    awkward = 'h_bucket{le="0.5"} 2 # {trace_id="a}b"} 0.3\nh_bucket{le="1"} 4 # {t="x\\"}"} 1\n# EOF\n'
    assert [(s.labels, s.value) for s in parse(awkward, SampleFilter(["h"]), openmetrics=True)] == [
        ((("le", "0.5"),), 2.0), ((("le", "1"),), 4.0)]
    with pytest.raises(ExpositionError) as cut:
        parse(text.replace("# EOF\n", ""), SampleFilter(["h"]), openmetrics=True)
    assert cut.value.reason == "truncated"


@pytest.mark.parametrize("text", [
    'm_total{a="1"} 3',                  # cut off mid-line: no final newline
    'm_total{a="1" 3\n',                 # unclosed label set
    'm_total{a="1"} three\n',            # not a number
    "m_total\n",                         # no value
    'm_total{a="unterminated\\"} 3\n',   # escaped quote never closed
])
def test_malformed_wanted_lines_raise(text):
    with pytest.raises(ExpositionError):
        parse(text, SampleFilter(["m"]))


def test_malformed_unwanted_lines_are_not_our_business():
    assert parse("junk line here\nm_total 1\n", SampleFilter(["m"]))[0].value == 1.0


# --- One reader over a target's scrapes: a repeat layout reads only values ---------------------------------

def moved_on(text: str, by: float) -> str:
    """The same exposition with every sample's value moved on by `by` (a later scrape of the same series)."""
    lines = []
    for line in text.split("\n"):
        if line and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            line = f"{head} {float(value) + by!r}"
        lines.append(line)
    return "\n".join(lines)


def test_a_reader_agrees_with_prometheus_client_scrape_after_scrape():
    reader = ExpositionReader(SampleFilter(VLLM_FAMILIES))
    first = VLLM_EXPOSITION.read_text()
    # (the scrape, whether its layout is the one before)
    scrapes = [
        (first, False),
        (moved_on(first, 1.0), True),  # values only
        (moved_on(first, 2.5), True),
        (moved_on(first, 3.0).replace('vllm:num_requests_running{engine="0"',  # a new series
                                      'vllm:num_requests_running{engine="1",model_name="x"} 7.0\n'
                                      'vllm:num_requests_running{engine="0"', 1), False),
        (moved_on(first, 4.0), False),  # the series is gone again
        (moved_on(first, 5.0).replace('running{engine="0"', 'running{engine="00"', 1), False),  # a label changed
        (moved_on(first, 6.0), False),
        (moved_on(first, 7.0).replace('python_info{', 'python_info{x="y",', 1), True),  # not a wanted family
    ]
    assert 'python_info{' in first
    assert 'vllm:num_requests_running{engine="0"' in first
    layout = None
    for text, repeats in scrapes:
        scrape = reader.read(text)
        got = [(s.name, tuple(sorted(s.labels)), s.value) for s in scrape.samples()]
        assert sorted(got) == sorted(reference(text, VLLM_FAMILIES))
        assert (scrape.layout is layout) == repeats
        layout = scrape.layout


def test_a_reader_sees_a_line_turn_wanted_where_an_unwanted_one_was():
    """No comments to tell families apart, the same number of lines: an unwanted series replaced by a wanted
    one, a blank line turned into a sample, a timestamp appearing."""
    reader = ExpositionReader(SampleFilter(["m"]))
    assert [s.value for s in reader.read("other 1\nm_total 2\n").samples()] == [2.0]
    assert [s.value for s in reader.read("m_total 3\nm_total{a=\"b\"} 4\n").samples()] == [3.0, 4.0]
    assert [s.value for s in reader.read("other 1\nm_total 2\n").samples()] == [2.0]
    assert [s.value for s in reader.read("other_x 1\nm_total 5\n").samples()] == [5.0]
    assert [s.value for s in reader.read("o{a=\"1\"} 1\n\nm_total 6\n").samples()] == [6.0]
    assert [s.value for s in reader.read("o{a=\"1\"} 1\nm_total 9\nm_total 7\n").samples()] == [9.0, 7.0]
    shorter = ExpositionReader(SampleFilter(["ab"]))  # an unwanted name that is the start of a wanted one
    assert [s.value for s in shorter.read("a 1\nab_total 2\n").samples()] == [2.0]
    assert [s.value for s in shorter.read("ab_total 3\nab_total 4\n").samples()] == [3.0, 4.0]
    assert [s.value for s in reader.read("o{a=\"1\"} 1\nm_total 9 1700000000000\nm_total 7\n").samples()] == [
        9.0, 7.0]
    assert [s.value for s in reader.read("o{a=\"1\"} 1\nm_total 10 1700000001000\nm_total 8\n").samples()] == [
        10.0, 8.0]


def test_a_reader_still_refuses_a_malformed_value_on_a_known_line():
    reader = ExpositionReader(SampleFilter(["m"]))
    reader.read('m_total{a="1"} 3\nm_total{a="2"} 4\n')
    with pytest.raises(ExpositionError) as bad:
        reader.read('m_total{a="1"} three\nm_total{a="2"} 4\n')
    assert bad.value.reason == "malformed"
    assert [s.value for s in reader.read('m_total{a="1"} 5\nm_total{a="2"} 6\n').samples()] == [5.0, 6.0]


def test_a_capped_scrape_keeps_its_first_samples_and_its_layout():
    reader = ExpositionReader(SampleFilter(["m"]))
    text = "".join(f'm_total{{a="{i}"}} {i}\n' for i in range(5))
    first = reader.read(text)
    capped = first.layout.capped(3)
    assert capped is first.layout.capped(3)
    again = reader.read(moved_on(text, 10.0))
    assert again.layout is first.layout
    assert [s.value for s in Scrape(capped, again.values).samples()] == [10.0, 11.0, 12.0]
