"""Golden probes: a fixed set of texts whose score tells a model that answers right from one that answers wrong.

Each item is a prompt and a continuation. Its score is the mean log-probability the served model gives the
continuation's tokens after the prompt, read by teacher forcing: one request carries prompt and continuation
as token ids, asks for one new token and the prompt's log-probabilities (vLLM's `prompt_logprobs`), and the
continuation's positions are averaged. A model that was corrupted (weights, quantisation, a GPU that computes
wrong) scores differently from the baseline recorded before its rollout; docs/correctness.md says how the
tolerance between the two was chosen.

Pure code: the golden set and the baseline file (the wire contract's report format), the request body and the
score. The HTTP calls are in slo_sidecar/iokit/golden_client.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

BASELINE_VERSION = "slo-sidecar/golden-baseline/v1"
DEFAULT_GOLDEN_SET = "golden.yaml"  # beside this module: the embedded model's set


class GoldenError(ValueError):
    """A golden set, a baseline or an engine's answer that cannot be used: the message names where and why."""


@dataclass(frozen=True)
class GoldenItem:
    prompt: str
    continuation: str


@dataclass(frozen=True)
class GoldenSet:
    items: tuple[GoldenItem, ...]
    source: str

    @property
    def fingerprint(self) -> str:
        """Changes whenever any item does: a baseline recorded on another set is refused."""
        text = json.dumps([[item.prompt, item.continuation] for item in self.items])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_golden_set(text: str, source: str) -> GoldenSet:
    """A YAML list of {prompt, continuation}, both non-empty strings."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GoldenError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(document, list) or not document:
        raise GoldenError(f"{source}: expected a non-empty list of {{prompt, continuation}} items")
    items = []
    for index, item in enumerate(document):
        if not isinstance(item, dict) or set(item) != {"prompt", "continuation"}:
            raise GoldenError(f"{source}: item {index}: expected exactly the fields prompt and continuation")
        for field in ("prompt", "continuation"):
            if not isinstance(item[field], str) or not item[field].strip():
                raise GoldenError(f"{source}: item {index}: {field}: expected a non-empty string")
        items.append(GoldenItem(item["prompt"], item["continuation"]))
    return GoldenSet(tuple(items), source)


def load_golden_set(path: str | None = None) -> GoldenSet:
    """The set at `path`, or the embedded model's (None)."""
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_GOLDEN_SET).read_text()
        return parse_golden_set(text, f"(embedded) {DEFAULT_GOLDEN_SET}")
    try:
        with open(path, encoding="utf-8") as file:
            return parse_golden_set(file.read(), path)
    except OSError as exc:
        raise GoldenError(f"{path}: {exc.strerror}") from None


def teacher_forcing_body(model: str, prompt_ids: list[int], continuation_ids: list[int]) -> dict[str, Any]:
    """The request that scores one item: prompt and continuation as token ids (so the boundary between them is
    exact, whatever the tokenizer would merge across it), one greedy new token, the prompt's log-probabilities."""
    return {"model": model, "prompt": [*prompt_ids, *continuation_ids], "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": 0}


def continuation_score(answer: Any, prompt_length: int, continuation_ids: list[int]) -> float:
    """The mean log-probability of the continuation's tokens, from a completions answer to teacher_forcing_body.

    vLLM's `prompt_logprobs` has one entry per prompt token (None for the first, which nothing precedes), each a
    map from token id to {logprob, ...} that always holds the token actually there."""
    try:
        entries = answer["choices"][0]["prompt_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise GoldenError("the answer has no choices[0].prompt_logprobs") from None
    if not isinstance(entries, list) or len(entries) != prompt_length + len(continuation_ids):
        raise GoldenError(f"expected {prompt_length + len(continuation_ids)} prompt_logprobs entries, "
                          f"got {len(entries) if isinstance(entries, list) else type(entries).__name__}")
    total = 0.0
    for offset, token in enumerate(continuation_ids):
        entry = entries[prompt_length + offset]
        try:
            logprob = float(entry[str(token)]["logprob"])
        except (KeyError, TypeError, ValueError):
            raise GoldenError(f"prompt_logprobs[{prompt_length + offset}] lacks token {token}'s logprob") from None
        total += logprob
    return total / len(continuation_ids)


@dataclass(frozen=True)
class GoldenBaseline:
    """What a healthy model scored on a golden set: recorded before a rollout, judged against after it."""

    model: str
    golden_set: str  # the set's fingerprint
    scores: tuple[float, ...]  # one per item, in the set's order

    def to_json(self) -> str:
        return json.dumps({"version": BASELINE_VERSION, "model": self.model, "golden_set": self.golden_set,
                           "scores": list(self.scores)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> GoldenBaseline:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise GoldenError(f"{source}: not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != BASELINE_VERSION:
            raise GoldenError(f"{source}: version: expected {BASELINE_VERSION!r}")
        scores = data.get("scores")
        if not isinstance(scores, list) or not scores or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            raise GoldenError(f"{source}: scores: expected a non-empty list of finite numbers")
        for field in ("model", "golden_set"):
            if not isinstance(data.get(field), str) or not data[field]:
                raise GoldenError(f"{source}: {field}: expected a non-empty string")
        return cls(data["model"], data["golden_set"], tuple(float(s) for s in scores))

    def check_matches(self, golden: GoldenSet, source: str) -> None:
        if self.golden_set != golden.fingerprint or len(self.scores) != len(golden.items):
            raise GoldenError(f"{source}: recorded on another golden set ({self.golden_set}, {len(self.scores)} "
                              f"items) than {golden.source} ({golden.fingerprint}, {len(golden.items)} items)")


@dataclass(frozen=True)
class ItemVerdict:
    index: int
    baseline: float
    score: float  # NaN when the engine's logits were NaN
    tolerance: float

    @property
    def shift(self) -> float:
        return self.score - self.baseline

    @property
    def good(self) -> bool:
        """Within tolerance of the baseline; a NaN score (NaN logits) never is."""
        return abs(self.shift) <= self.tolerance


def judge_scores(baseline: GoldenBaseline, scores: list[float], tolerance: float) -> list[ItemVerdict]:
    return [ItemVerdict(index, expected, score, tolerance)
            for index, (expected, score) in enumerate(zip(baseline.scores, scores))]
