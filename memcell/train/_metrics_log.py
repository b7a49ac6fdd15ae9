"""The JSONL metrics log of ``fit``: one line a train step, one an evaluation; cut back to the
checkpoint on resume so that it reads as one uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import pathlib


def _logged_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """An open JSONL file, or nothing (``path=None``: every method does nothing).

    Opening it at ``start == 0`` empties the file; at ``start > 0`` (a resumed run) it keeps the
    lines up to step ``start`` and drops the rest.
    """

    def __init__(self, path: str | os.PathLike | None, start: int):
        self.file = None
        if path is None:
            return
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if start > 0 and path.exists():
            # Every line up to the checkpoint was flushed before it was saved; later lines (and
            # a last line cut by a kill) belong to the lost part of the run.
            kept = [ln for ln in path.read_text().splitlines() if _logged_step(ln) <= start]
            path.write_text("".join(ln + "\n" for ln in kept))
        elif start == 0:
            path.write_text("")
        self.file = open(path, "a")

    def write(self, row: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")

    def sync(self) -> None:
        """Flushes the file to disk: done before every checkpoint, so the log never lags behind one."""
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
