"""Histories backfilled into a Prometheus TSDB with promtool, for the lab's replay and the fleet bench.

Raw series go in from an OpenMetrics file (`promtool tsdb create-blocks-from openmetrics`); recording
rules are evaluated over what a running Prometheus already holds (`create-blocks-from rules`), so a
rule that reads another's record must come a run later: `rule_levels` orders them so.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def promtool(args: list[str], log: Path, cwd: Path | None = None) -> None:
    """Run promtool with its output in log; RuntimeError with the output's end when it fails."""
    with open(log, "wb") as output:
        returncode = subprocess.run(["promtool", *args], stdout=output, stderr=subprocess.STDOUT, cwd=cwd).returncode
    if returncode:
        raise RuntimeError(f"promtool {' '.join(args)} exited with {returncode}:\n{log.read_text()[-2000:]}")


def openmetrics_blocks(source: Path, out: Path, log: Path, max_block_hours: int | None = None) -> None:
    """TSDB blocks in `out` from an OpenMetrics file. promtool parses the whole file once per block, and its
    default 2h blocks make a month 360 passes: `max_block_hours` (a hidden flag in 2.42) makes it a few."""
    duration = [f"--max-block-duration={max_block_hours}h"] if max_block_hours else []
    promtool(["tsdb", "create-blocks-from", "openmetrics", *duration, str(source), str(out)], log)


def rule_blocks(url: str, rule_files: list[str], start: float, end: float, eval_interval_s: int, out: Path,
                log: Path, cwd: Path | None = None) -> None:
    """TSDB blocks in `out` of the recording rules in `rule_files`, evaluated every `eval_interval_s` from
    `start` to `end` over what the Prometheus at `url` holds. A group's evaluation offset hashes its file's
    path as given: give the same relative paths (from `cwd`) and the instants are the same every run."""
    promtool(["tsdb", "create-blocks-from", "rules", f"--start={int(start)}", f"--end={int(end)}",
              f"--eval-interval={eval_interval_s}s", f"--url={url}", f"--output-dir={out}", *rule_files], log, cwd)


def rule_levels(rules: list[dict]) -> list[list[dict]]:
    """Recording rules in dependency levels, each reading only raw series and earlier levels' records.

    promtool evaluates all the rules of one backfill against the data as it was before it, so a rule that
    reads another rule's series must come a level later. A rule depends on every other rule whose recorded
    name its expression mentions.
    """
    recorders: dict[str, set[int]] = defaultdict(set)
    for index, rule in enumerate(rules):
        recorders[rule["record"]].add(index)
    needs = [{other for name in _METRIC_NAME.findall(rule["expr"]) for other in recorders.get(name, ())
              if other != index} for index, rule in enumerate(rules)]
    levels: list[list[dict]] = []
    pending = set(range(len(rules)))
    while pending:
        ready = {index for index in pending if not needs[index] & pending}
        if not ready:
            raise ValueError("recording rules read each other in a cycle: "
                             + ", ".join(sorted({rules[index]["record"] for index in pending})))
        levels.append([rules[index] for index in sorted(ready)])
        pending -= ready
    return levels
