"""What one measured config leaves behind: a self-describing :class:`Result` row.

Results are plain data (no torch, no models) so the store and the reports can use them
without running anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Result:
    """One config measured on one model, text and settings.

    ``metrics`` maps the documented metric names (README, "Columns") to numbers;
    ``generations`` holds per prompt the text, token ids and the first token that differs
    from the baseline; ``meta`` the settings, versions, hardware and file paths behind them;
    ``per_source`` the accuracy metrics of each text source when a run has several;
    ``tasks`` per task and metric the accuracy, flips against the baseline and McNemar's p.
    """

    key: str
    config: str
    model_fingerprint: str
    data_fingerprint: str
    settings_fingerprint: str
    metrics: dict[str, float]
    generations: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    per_source: dict[str, dict[str, float]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_nan_safe)  # key order kept (sources)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls(**json.loads(text))

    def row(self) -> dict[str, Any]:
        """A flat row for tables and DataFrames: config, then every metric."""
        return {"config": self.config, **self.metrics}


def _nan_safe(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


@dataclass(frozen=True)
class Outcome:
    """What happened to one config in a run: measured, reused from the store, skipped, failed."""

    config: str
    status: str  # "measured" | "reused" | "skipped" | "failed"
    reason: str = ""
    result: Result | None = None


@dataclass(frozen=True)
class RunReport:
    """A whole run: its id, settings and provenance, and one outcome per config."""

    run_id: str
    outcomes: list[Outcome]
    settings: dict[str, Any]
    provenance: dict[str, Any]

    @property
    def results(self) -> list[Result]:
        return [o.result for o in self.outcomes if o.result is not None]

    def to_dataframe(self) -> Any:
        """One row per measured config (pandas is imported here, on demand).

        >>> RunReport("r", [], {}, {}).to_dataframe().shape
        (0, 0)
        """
        import pandas as pd

        return pd.DataFrame([r.row() for r in self.results])

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: settings, provenance, outcomes with full results."""
        return {
            "run_id": self.run_id,
            "settings": self.settings,
            "provenance": self.provenance,
            "configs": [
                {
                    "config": o.config,
                    "status": o.status,
                    "reason": o.reason,
                    "result": json.loads(o.result.to_json()) if o.result else None,
                }
                for o in self.outcomes
            ],
        }
