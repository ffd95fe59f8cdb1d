"""The optional `jaeger` extra, tested in its own environment (.venv-jaeger).

The Jaeger thrift exporter imports only with the OpenTelemetry SDK up to 1.39,
older than the one vLLM pulls into .venv, so scripts/setup.sh builds a second,
small environment with the extra, and this test runs a probe inside it.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import REPO

JAEGER_PYTHON = REPO / ".venv-jaeger" / "bin" / "python"


@pytest.mark.skipif(not JAEGER_PYTHON.exists(),
                    reason="no .venv-jaeger: the jaeger extra's environment is made by scripts/setup.sh")
def test_jaeger_exporter_sends_the_span_tree_as_a_thrift_batch_over_udp():
    result = subprocess.run([str(JAEGER_PYTHON), "tests/jaeger_probe.py"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    batch = json.loads(result.stdout)
    assert batch["method"] == "emitBatch"
    assert batch["service"] == "jaeger-probe"
    spans = {span["name"]: span for span in batch["spans"]}
    server, genai = spans["POST /v1/completions"], spans["text_completion tiny-llama"]
    assert genai["trace_id"] == server["trace_id"]
    assert genai["parent_span_id"] == server["span_id"]
    assert server["tags"]["span.kind"] == "server"
    assert server["tags"]["http.response.status_code"] == 200
    assert genai["tags"]["gen_ai.operation.name"] == "text_completion"
    assert genai["tags"]["gen_ai.usage.output_tokens"] == 8
