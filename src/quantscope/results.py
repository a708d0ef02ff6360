"""What one measured config leaves behind: a self-describing :class:`Result` row.

Results are plain data (no torch, no models) so the store and the reports can use them
without running anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from quantscope.config import did_you_mean
from quantscope.errors import UserError


@dataclass(frozen=True)
class Result:
    """One config measured on one model, text and settings.

    ``metrics`` maps the documented metric names (README, "Columns") to numbers;
    ``generations`` holds per prompt the text, token ids and the first token that differs
    from the baseline; ``meta`` the settings, versions, hardware and file paths behind them;
    ``per_source`` the accuracy metrics of each text source when a run has several;
    ``by_position`` those of each bucket of position within the window (``"512-2048"``: the
    tokens predicted with 512 to 2,047 tokens of context) when the scored tokens span several;
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
    by_position: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_nan_safe)  # key order kept (sources)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls(**json.loads(text))

    @property
    def invalid(self) -> str:
        """Why this result has no accuracy numbers (its logits held NaN or inf), else ""."""
        m = self.metrics
        if not m.get("nonfinite_tokens"):
            return ""
        return (
            f"logits held NaN or inf on {100 * m['nonfinite_share']:.1f}% of scored tokens "
            f"(first in window {int(m['nonfinite_first_window'])}): its accuracy is invalid, "
            "not averaged over the rest"
        )

    def row(self) -> dict[str, Any]:
        """A flat row for tables and DataFrames: config, then every metric."""
        return {"config": self.config, **self.metrics}


def _nan_safe(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


class Status(str, Enum):
    """What happened to one config in a run."""

    MEASURED = "measured"
    REUSED = "reused"  # found in the store, measured with these settings before
    SKIPPED = "skipped"  # cannot run here (its reason says why)
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What happened to one config in a run, why (for skipped and failed), and its result."""

    config: str
    status: Status
    reason: str = ""
    result: Result | None = None
    model: str = ""  # which model's run it belongs to (a study has several)
    token_values: bytes | None = field(default=None, repr=False)  # TokenValues.to_bytes()


@dataclass(frozen=True)
class View:
    """How one kind of result shows itself in a notebook: an HTML fragment, and its plots by
    name (plotly figure bodies, None where a plot has nothing to draw)."""

    html: Callable[[Any], str]
    plots: Callable[[Any], dict[str, Any]]
    generations: Callable[[Any], Any] | None = None  # a run's generations beside the baseline's


_VIEWS: dict[type, View] = {}


def register_view(kind: type, view: View) -> None:
    """Say how results of ``kind`` (and its subclasses) show in a notebook; ``report.notebook``
    registers the built-in kinds (results are data: they never import their renderer)."""
    _VIEWS[kind] = view


def view_of(kind: type) -> View:
    """The view registered for ``kind`` or its nearest base class."""
    for klass in kind.__mro__:
        if klass in _VIEWS:
            return _VIEWS[klass]
    raise TypeError(f"No notebook view is registered for {kind.__name__}.")


class Display:
    """A result that shows itself in Jupyter: an HTML table (``_repr_html_``) and its plots as
    plotly figures (``plot(NAME)``; ``plots()`` lists them), through the :class:`View`
    registered for its type (``report.notebook`` registers them when ``quantscope`` is
    imported)."""

    def _repr_html_(self) -> str:
        return view_of(type(self)).html(self)

    def plots(self) -> list[str]:
        return list(view_of(type(self)).plots(self))

    def plot(self, name: str | None = None) -> Any:
        """A plotly figure (the first of :meth:`plots` when ``name`` is None)."""
        import plotly.graph_objects as go

        plots = view_of(type(self)).plots(self)
        kind = type(self).__name__
        if not plots:
            raise UserError(f"A {kind} has no plots; show it as a table instead.")
        name = name or next(iter(plots))
        if name not in plots:
            raise UserError(
                f"No plot '{name}' for a {kind}.{did_you_mean(name, list(plots))} "
                f"Plots: {', '.join(plots)}."
            )
        if plots[name] is None:
            raise UserError(f"Plot '{name}' has nothing to draw in this result.")
        return go.Figure(plots[name])


@dataclass(frozen=True)
class RunReport(Display):
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

    def generations(self) -> Any:
        """The greedy generations side by side with the baseline's, differing tokens marked
        (renders in Jupyter; ``str()`` is the HTML)."""
        show = view_of(type(self)).generations
        if show is None:
            raise TypeError(f"No generations view is registered for {type(self).__name__}.")
        return show(self)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: settings, provenance, outcomes with full results."""
        return {
            "run_id": self.run_id,
            "settings": self.settings,
            "provenance": self.provenance,
            "configs": [
                {
                    "config": o.config,
                    "status": o.status.value,
                    "reason": o.reason,
                    "result": json.loads(o.result.to_json()) if o.result else None,
                }
                for o in self.outcomes
            ],
        }


@dataclass(frozen=True)
class Unit:
    """One switchable part: a linear layer, or every linear of one block."""

    name: str
    layer: int | None
    kind: str
    linears: tuple[str, ...]
    params: int


@dataclass
class SensitivityStudy(Display):
    """A finished sensitivity study: per unit and mode, calibration KL and Δppl."""

    key: str
    settings: dict[str, Any]
    units: list[Unit]
    rows: dict[tuple[str, str], dict[str, float]]
    costs: dict[str, float]

    @property
    def all_quantized(self) -> dict[str, float]:
        return self.rows[("*", "all")]

    def ranking(self) -> list[dict[str, Any]]:
        """One row per unit, most sensitive first (by KL with only it quantized, else by the
        KL it saves when it alone is kept in the fallback precision)."""
        full = self.all_quantized["kl"]
        out = []
        for unit in self.units:
            row: dict[str, Any] = {
                "unit": unit.name,
                "layer": unit.layer,
                "kind": unit.kind,
                "params": unit.params,
                "mb_to_keep": self.costs[unit.name],
            }
            for mode, prefix in (("only", "only"), ("all-but", "all_but")):
                found = self.rows.get((unit.name, mode))
                if found:
                    row.update({f"{prefix}_{k}": v for k, v in found.items()})
            if "all_but_kl" in row:
                row["gain"] = full - row["all_but_kl"]
            out.append(row)
        key = "only_kl" if "only" in self.settings["modes"] else "gain"
        return sorted(out, key=lambda r: -r[key])

    def to_dataframe(self) -> Any:
        """One row per unit, most sensitive first (the ranking)."""
        import pandas as pd

        return pd.DataFrame(self.ranking())

    def matrix(self, mode: str = "only") -> tuple[list[int], list[str], list[list[float]]]:
        """Layers × kinds of one mode's KL (NaN where a layer has no such unit), for a heatmap."""
        cells = {
            (u.layer, u.kind): self.rows[(u.name, mode)]["kl"]
            for u in self.units
            if (u.name, mode) in self.rows and u.layer is not None
        }
        layers = sorted({layer for layer, _ in cells})
        kinds = list(dict.fromkeys(kind for _, kind in cells))
        return layers, kinds, [[cells.get((la, k), math.nan) for k in kinds] for la in layers]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "settings": self.settings,
            "units": [asdict(u) for u in self.units],
            "rows": [{"unit": u, "mode": m, **v} for (u, m), v in self.rows.items()],
            "costs": self.costs,
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> SensitivityStudy:
        units = [Unit(**{**u, "linears": tuple(u["linears"])}) for u in body["units"]]
        rows = {
            (r["unit"], r["mode"]): {k: v for k, v in r.items() if k not in ("unit", "mode")}
            for r in body["rows"]
        }
        return cls(body["key"], body["settings"], units, rows, body["costs"])


def estimable_buckets(results: list[Result]) -> set[str]:
    """The buckets of position within the window that two windows or more reach (an se needs
    two): a by-position table or plot has something to show only with two such buckets (the
    default run's first 127 tokens come from its first window alone)."""
    return {b for r in results for b, m in r.by_position.items() if m.get("windows", 0) >= 2}


def depths_in(metrics: dict[str, float]) -> list[int]:
    """The context depths a result's KV cache was measured at (``kv_bytes@D``), ascending.

    >>> depths_in({"kv_bytes@4096": 1.0, "kv_bytes@0": 0.0, "kl_mean": 0.1})
    [0, 4096]
    """
    return sorted({int(k.split("@")[1]) for k in metrics if k.startswith("kv_bytes@")})


def served_levels(metrics: dict[str, Any]) -> list[int]:
    """The concurrency levels a result's load test measured, in order.

    >>> served_levels({"serve_c16_out_tps": 1.0, "serve_c1_out_tps": 2.0, "kl_mean": 0.1})
    [1, 16]
    """
    found = {
        int(k[len("serve_c") : -len("_out_tps")])
        for k in metrics
        if k.startswith("serve_c") and k.endswith("_out_tps")
    }
    return sorted(found)
