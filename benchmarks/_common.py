"""What the benchmark scripts share: interleaved timing rounds, the CPU's name, and writing one
marked section of docs/benchmarks.md."""

import os
import platform
import time


def race(fns: dict, rounds: int) -> dict:
    """Min wall time of each function over ``rounds`` interleaved rounds (after one warm-up call each):
    a machine shared with other work slows every implementation alike, so the ratios hold."""
    for f in fns.values():
        f()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def cpu_name() -> str:
    """The CPU model (the machines change from run to run), or the platform's best guess."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def write_section(path: str, section: str, start: str, end: str) -> None:
    """Replaces the text between the ``start`` and ``end`` markers in ``path`` (appends it when absent)."""
    text = open(path).read() if os.path.exists(path) else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)
