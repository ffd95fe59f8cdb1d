"""Golden scores against real engines: a baseline recorded by `validate --golden-out` holds under load on the
healthy engine; a model directory with one tensor perturbed fails `validate --golden` on every item; weights
corrupted or logits made NaN in the running engine (its admin listener, through vLLM's collective_rpc) fail it
until undone; and the sidecar's golden probes quarantine the pod, burn its correctness SLO, and let it back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
import yaml

from slo_sidecar.app import golden_gate
from slo_sidecar.app.processes import EngineProcess, SidecarProcess
from slo_sidecar.engine.tiny_model import MODEL_NAME, ensure_default_model
from slo_sidecar.iokit.golden_client import GoldenClient
from slo_sidecar.spec.golden import GoldenBaseline, judge_scores, load_golden_set
from slo_sidecar.spec.load import DEFAULT_SPEC, load_spec
from tests.conftest import API_KEY, run_async, serving
from tests.helpers import REPO, metric, parse_metrics

pytestmark = pytest.mark.engine
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PERTURBED = "lm_head.weight"  # times 1.1: every item moves by 0.0028 to 0.012 nats/token (docs/correctness.md)


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slo_sidecar.app.cli", "validate", "--api-key", API_KEY, *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def baseline(engine, tmp_path_factory):
    """The healthy engine's golden scores, recorded as a user records them before a rollout."""
    path = tmp_path_factory.mktemp("golden") / "golden-baseline.json"
    done = validate("--url", engine.url, "--golden-out", str(path))
    assert done.returncode == 0, done.stderr
    recorded = GoldenBaseline.from_json(path.read_text(), str(path))
    golden = load_golden_set()
    assert recorded.model == MODEL_NAME and recorded.golden_set == golden.fingerprint
    assert len(recorded.scores) == len(golden.items)
    # Nearly uniform predictions of a random-weight model over 2,048 tokens: about -ln 2048 = -7.62 each.
    assert all(-9.0 < score < -6.5 for score in recorded.scores), recorded.scores
    return path


def test_the_deployed_baseline_is_what_the_embedded_model_scores(baseline):
    """deploy/base's golden-baseline.json (its ConfigMap) holds for the embedded model as built here: a rebuilt
    model that scored otherwise would quarantine every pod the manifests deploy."""
    deployed_path = REPO / "deploy" / "base" / "golden-baseline.json"
    deployed = GoldenBaseline.from_json(deployed_path.read_text(), str(deployed_path))
    recorded = GoldenBaseline.from_json(baseline.read_text(), str(baseline))
    assert (deployed.model, deployed.golden_set) == (recorded.model, recorded.golden_set)
    tolerance = load_spec(str(DEFAULT_SPEC)).correctness.tolerance
    moved = [v for v in judge_scores(deployed, list(recorded.scores), tolerance) if not v.good]
    assert not moved, moved


@run_async
async def test_the_healthy_engine_keeps_its_baseline_under_a_load_of_every_batch_size(engine, baseline):
    """Batches of 1 to the engine's 4 sequences (tests/conftest.py) around each probe: no item moves beyond the
    tolerance (on the CPU build, by nothing at all: its kernels do not depend on the batch)."""
    spec = load_spec(str(DEFAULT_SPEC))
    recorded = GoldenBaseline.from_json(baseline.read_text(), str(baseline))
    body = {"prompt": "load", "max_tokens": 48, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession(headers=AUTH) as session:
        client = GoldenClient(session, engine.url, load_golden_set(), AUTH)

        async def stream() -> None:
            async with session.post(engine.url + "/v1/completions", json=body) as response:
                assert response.status == 200
                await response.read()

        for streams in (0, 1, 2, 3):  # the probe makes the batch's last sequence
            load = [asyncio.create_task(stream()) for _ in range(streams)]
            await asyncio.sleep(0.2)  # the streams are decoding when the probes arrive
            scores = await client.score_all()
            await asyncio.gather(*load)
            verdicts = judge_scores(recorded, scores, spec.correctness.tolerance)
            assert all(v.good for v in verdicts), [(v.index, v.shift) for v in verdicts]


def test_a_perturbed_model_directory_fails_the_gate_and_the_original_passes(engine, baseline, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "perturbed"
    shutil.copytree(ensure_default_model(), model_dir)
    tensors = load_file(model_dir / "model.safetensors")
    tensors[PERTURBED] = (tensors[PERTURBED].to(torch.float32) * 1.1).to(tensors[PERTURBED].dtype)
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})

    spec = load_spec(str(DEFAULT_SPEC))
    assert golden_gate.check(engine.url, spec, baseline, API_KEY), "the original model passes"
    with serving_engine(tmp_path, model_dir) as candidate:
        done = validate("--url", candidate.url, "--golden", str(baseline), "--requests", "4", "--report", "")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.strip().startswith("item ")]
    assert len(rows) == len(load_golden_set().items) and all(row.endswith("FAIL") for row in rows), done.stdout
    assert "golden: FAIL (0 of 8 within tolerance)" in done.stdout


@contextlib.contextmanager
def serving_engine(tmp_path, model_dir):
    """An engine on a model directory, with the session engine's API key, stopped in order at the end."""
    yield from serving(EngineProcess(tmp_path / "candidate.log", "--model", str(model_dir), "--served-model-name",
                                     MODEL_NAME, "--max-model-len", "512", "--api-key", API_KEY))


def test_a_baseline_of_another_set_or_no_url_exits_2(engine, baseline, tmp_path):
    other = tmp_path / "other.json"
    data = json.loads(baseline.read_text())
    other.write_text(json.dumps({**data, "golden_set": "0000000000000000"}))
    done = validate("--url", engine.url, "--golden", str(other))
    assert done.returncode == 2 and "recorded on another golden set" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    missing = validate("--url", engine.url, "--golden", str(tmp_path / "nowhere.json"))
    assert missing.returncode == 2 and "--golden " in missing.stderr and "No such file" in missing.stderr
    no_url = validate("--golden-out", str(tmp_path / "x.json"))
    assert no_url.returncode == 2 and "need --url" in no_url.stderr


def model_faults(engine: EngineProcess, body: dict) -> tuple[int, dict]:
    """POST /admin/model-faults on the engine's admin listener, as the lab does."""
    request = urllib.request.Request(engine.admin_url + "/admin/model-faults", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             **engine.admin_headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_weights_corrupted_in_the_running_engine_fail_the_gate_until_undone(engine, baseline):
    """A norm's weight times 1.1 through vLLM's collective_rpc (its linear weights are packed at load on the CPU
    build: docs/correctness.md): every item moves by 0.0028 to 0.012 nats/token, beyond the 0.001 tolerance."""
    spec = load_spec(str(DEFAULT_SPEC))
    try:
        status, state = model_faults(engine, {"scale": {"parameter": "model.norm.weight", "factor": 1.1}})
        assert status == 200 and state == {"scaled": {"parameter": "model.norm.weight", "factor": 1.1},
                                           "nan_logits": False}
        assert not golden_gate.check(engine.url, spec, baseline, API_KEY)
    finally:
        assert model_faults(engine, {}) == (200, {"scaled": None, "nan_logits": False})
    assert golden_gate.check(engine.url, spec, baseline, API_KEY), "the saved tensor is back, bit for bit"


def test_a_model_fault_the_engine_cannot_make_is_refused_and_changes_nothing(engine, baseline):
    for body, status, words in [({"scale": {"parameter": "model.nowhere", "factor": 2}}, 409, "no parameter"),
                                ({"scale": {"parameter": "model.norm.weight"}}, 400, "scale: expected"),
                                ({"scale": {"parameter": "model.norm.weight", "factor": "x"}}, 400, "scale.factor"),
                                ({"nan_logits": 1}, 400, "nan_logits: expected true or false"),
                                ({"bogus": True}, 400, "at most the fields")]:
        code, answer = model_faults(engine, body)
        assert code == status and words in answer["error"]["message"], (body, answer)
    assert golden_gate.check(engine.url, load_spec(str(DEFAULT_SPEC)), baseline, API_KEY)


def sidecar_state(sidecar: SidecarProcess) -> tuple[int, dict[tuple[str, frozenset], float]]:
    """(the status of its /ready, its series)."""
    try:
        with urllib.request.urlopen(sidecar.url + "/ready", timeout=5) as response:
            ready = response.status
    except urllib.error.HTTPError as error:
        ready = error.code
    with urllib.request.urlopen(sidecar.url + "/metrics", timeout=5) as response:
        return ready, parse_metrics(response.read().decode())


def wait_for(sidecar: SidecarProcess, condition, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        ready, series = sidecar_state(sidecar)
        if condition(ready, series):
            return ready, series
        assert time.monotonic() < deadline, (ready, {k: v for k, v in series.items() if "golden" in k[0]})
        time.sleep(0.25)


def test_bad_golden_probes_quarantine_the_pod_and_a_good_one_brings_it_back(engine, baseline, tmp_path):
    """The sidecar probes one item a second (a spec of its own); two bad in a row fail its /ready while the
    engine keeps serving; the undone fault's first good probe makes it ready again."""
    spec = tmp_path / "slo.yaml"  # the default SLOs (a correctness SLO among them), and probes a second apart
    document = yaml.safe_load(DEFAULT_SPEC.read_text())
    assert "correctness" in {slo["name"] for slo in document["slos"]}
    document["correctness"] = {"interval_s": 1, "bad_in_a_row": 2, "quarantine": True}
    spec.write_text(yaml.safe_dump(document))
    args = ("--slo", str(spec), "--golden-baseline", str(baseline), "--engine-api-key", API_KEY,
            "--probe-interval-s", "0")

    def probes(series, result: str) -> float:
        return sum(v for (name, labels), v in series.items()
                   if name == "slo_golden_probes_total" and ("result", result) in labels)

    with SidecarProcess(tmp_path / "sidecar.log", engine.url, *args).start() as sidecar:
        sidecar.wait_ready()
        _, series = wait_for(sidecar, lambda ready, s: probes(s, "good") >= 2 and ready == 200)
        # The sidecar's live SLI takes its own probes' counts: good ones so far, so no error.
        assert metric(series, "slo_sli_error_ratio", slo="correctness", window="5m") == 0.0
        try:
            assert model_faults(engine, {"scale": {"parameter": "model.norm.weight", "factor": 1.1}})[0] == 200
            good = probes(sidecar_state(sidecar)[1], "good")
            started = time.monotonic()
            ready, series = wait_for(sidecar, lambda ready, s: ready == 503)
            quarantined_after_s = time.monotonic() - started
            assert probes(series, "bad") >= 2 and probes(series, "good") <= good + 1  # one in flight at most
            assert metric(series, "slo_quarantined") == 1.0
            burned = metric(series, "slo_sli_error_ratio", slo="correctness", window="5m")
            # Within 5 minutes of its start: every bad probe over every probe after the first, whose count is
            # where the increases start from (Prometheus's rule for a counter's first sample).
            good, bad = probes(series, "good"), probes(series, "bad")
            assert burned == pytest.approx(bad / (good + bad - 1), rel=1e-9), (burned, good, bad)
            # Two probes a second apart, and the one in flight: about 3 s. The engine itself is still ready.
            assert quarantined_after_s < 10, quarantined_after_s
            with urllib.request.urlopen(engine.url + "/ready", timeout=5) as response:
                assert response.status == 200
        finally:
            assert model_faults(engine, {})[0] == 200
        ready, series = wait_for(sidecar, lambda ready, s: ready == 200)
        assert metric(series, "slo_quarantined") == 0.0 and metric(series, "slo_golden_bad_in_a_row") == 0.0

    # A baseline of another model (the manifests' base on a GPU overlay's model, say) is refused: no probe is
    # judged against it, so a healthy pod is never quarantined by it, and the refusal is counted.
    other = tmp_path / "other-model.json"
    recorded = GoldenBaseline.from_json(baseline.read_text(), str(baseline))
    other.write_text(GoldenBaseline("/models/current", recorded.golden_set, recorded.scores).to_json())
    args = ("--slo", str(spec), "--golden-baseline", str(other), "--engine-api-key", API_KEY, "--probe-interval-s", "0")
    with SidecarProcess(tmp_path / "other.log", engine.url, *args).start() as sidecar:
        sidecar.wait_ready()
        ready, series = wait_for(sidecar, lambda ready, s: metric(
            s, "sidecar_collector_errors_total", collector="golden", reason="other_model") >= 3)
        assert ready == 200 and probes(series, "good") == probes(series, "bad") == 0
    assert "the golden baseline was recorded on '/models/current', the engine serves 'tiny-llama'" in (
        tmp_path / "other.log").read_text()


def test_nan_logits_answer_200_with_nothing_are_counted_by_vllm_and_fail_the_golden_probe(engine, baseline):
    """The silent failure: a normal request still answers 200 (with an empty text); vLLM counts it as corrupted,
    and every golden item scores NaN (vLLM refuses to write NaN log-probabilities: 400)."""
    def corrupted() -> float:
        with urllib.request.urlopen(engine.url + "/metrics", timeout=10) as response:
            return metric(parse_metrics(response.read().decode()), "vllm:corrupted_requests_total")

    spec = load_spec(str(DEFAULT_SPEC))
    before = corrupted()
    try:
        assert model_faults(engine, {"nan_logits": True}) == (200, {"scaled": None, "nan_logits": True})
        request = urllib.request.Request(engine.url + "/v1/completions", method="POST",
                                         data=json.dumps({"prompt": "hi", "max_tokens": 4}).encode(),
                                         headers={"Content-Type": "application/json", **AUTH})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
        deadline = time.monotonic() + 10  # vLLM's stat logger counts it beside the answer, not before it
        while corrupted() < before + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert corrupted() == before + 1
        scores = asyncio.run(score_all(engine))
        assert all(math.isnan(score) for score in scores), scores
        assert not golden_gate.check(engine.url, spec, baseline, API_KEY)
    finally:
        assert model_faults(engine, {})[0] == 200
    assert golden_gate.check(engine.url, spec, baseline, API_KEY)


async def score_all(engine: EngineProcess) -> list[float]:
    async with aiohttp.ClientSession() as session:
        return await GoldenClient(session, engine.url, load_golden_set(), AUTH).score_all()
