"""What every suite returns: metrics for ``eval.json`` and per-item samples for inspection."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SuiteResult:
    metrics: dict
    """Scores in percentage points (0-100), plus ``n``, ``version`` and the settings that shape them."""
    samples: list[dict] = dataclasses.field(default_factory=list)
    """One record per item (prompt, completions, prediction, correctness), written to ``samples/<suite>.jsonl``."""


def percent(hits: int | float, total: int) -> float:
    return 100.0 * hits / total if total else 0.0
