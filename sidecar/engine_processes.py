"""Which processes are the engine's: for attributing GPU memory to it, read from /proc.

In a pod with `shareProcessNamespace: true` the sidecar sees the engine's
processes. vLLM keeps the model weights and KV cache in its engine-core child
process, not in the API server process, so the engine is the whole tree under
the process whose command line matches (or the PID given), not one PID.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PROC = Path("/proc")
# Our engine started by its console script or as a module, or a stock vLLM OpenAI server.
DEFAULT_PATTERN = r"(slo-sidecar|slo_sidecar(\.app\.cli)?) engine\b|vllm serve\b|vllm\.entrypoints\.openai"


def process_table(proc: Path = PROC) -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of every process visible here."""
    table: dict[int, tuple[int, str]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # it exited while we looked
            continue
        # The command name may hold spaces and parentheses; the fields after its last ')' are fixed.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (parent, cmdline.replace(b"\0", b" ").decode(errors="replace").strip())
    return table


def descendants(pid: int, table: dict[int, tuple[int, str]]) -> set[int]:
    """All descendants of pid in the table (not pid itself)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def engine_pids(pattern: str = DEFAULT_PATTERN, pid: int | None = None, proc: Path = PROC) -> set[int]:
    """The engine's processes: `pid`, or every process whose command line matches the regex, with descendants."""
    table = process_table(proc)
    if pid is not None:
        roots = {pid} if pid in table else set()
    else:
        me = os.getpid()
        matcher = re.compile(pattern)
        roots = {p for p, (_, cmdline) in table.items() if p != me and matcher.search(cmdline)}
    found = set(roots)
    for root in roots:
        found |= descendants(root, table)
    return found
