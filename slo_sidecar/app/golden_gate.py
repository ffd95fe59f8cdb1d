"""`slo-sidecar validate --golden-out FILE` and `--golden FILE`: a model's golden scores recorded before a
rollout, and a candidate judged against them (the maths: spec/golden.py; the tolerance: the spec's
`correctness` section, docs/correctness.md)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from slo_sidecar.iokit.files import write_atomically
from slo_sidecar.iokit.golden_client import GoldenClient
from slo_sidecar.spec.golden import (
    GoldenBaseline,
    GoldenError,
    GoldenSet,
    ItemVerdict,
    judge_scores,
    load_golden_set,
)
from slo_sidecar.spec.model import Spec


class GoldenGateError(Exception):
    """The golden check could not be made (exit 2): the message names the file or the engine, and why."""


async def _scores(url: str, golden: GoldenSet, api_key: str | None) -> tuple[str, list[float]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession() as session:
        client = GoldenClient(session, url, golden, headers)
        return await client.served_model(), await client.score_all()


def _score(url: str, golden: GoldenSet, api_key: str | None) -> tuple[str, list[float]]:
    try:
        return asyncio.run(_scores(url, golden, api_key))
    except GoldenError as error:
        raise GoldenGateError(str(error)) from None
    except (OSError, aiohttp.ClientError, asyncio.TimeoutError) as error:
        raise GoldenGateError(f"cannot score the golden set on {url}: {str(error) or type(error).__name__}") from None


def record(url: str, spec: Spec, out: Path, api_key: str | None) -> None:
    try:
        golden = load_golden_set(spec.correctness.golden_set)
    except GoldenError as error:
        raise GoldenGateError(str(error)) from None
    model, scores = _score(url, golden, api_key)
    write_atomically(out, GoldenBaseline(model, golden.fingerprint, tuple(scores)).to_json())
    print(f"golden: {len(scores)} items scored on {model} at {url}, mean {sum(scores) / len(scores):.4f} "
          f"nats/token: {out}", file=sys.stderr)


def check(url: str, spec: Spec, baseline_path: Path, api_key: str | None) -> bool:
    """Scores the candidate and prints one line per item; True when every item is within tolerance."""
    try:
        baseline = GoldenBaseline.from_json(baseline_path.read_text(), str(baseline_path))
        golden = load_golden_set(spec.correctness.golden_set)
        baseline.check_matches(golden, str(baseline_path))
    except OSError as error:
        raise GoldenGateError(f"--golden {baseline_path}: {error.strerror}") from None
    except GoldenError as error:
        raise GoldenGateError(f"--golden {error}") from None
    model, scores = _score(url, golden, api_key)
    verdicts = judge_scores(baseline, scores, spec.correctness.tolerance)
    print(f"golden set on {model} against {baseline_path} (recorded on {baseline.model}), "
          f"tolerance {spec.correctness.tolerance:g} nats/token:")
    for verdict in verdicts:
        print(_row(verdict))
    bad = [v for v in verdicts if not v.good]
    print(f"golden: {'PASS' if not bad else 'FAIL'} ({len(verdicts) - len(bad)} of {len(verdicts)} within tolerance)")
    return not bad


def _row(verdict: ItemVerdict) -> str:
    return (f"  item {verdict.index}: baseline {verdict.baseline:.4f}, now {verdict.score:.4f}, "
            f"moved {verdict.shift:+.4f}  {'pass' if verdict.good else 'FAIL'}")
