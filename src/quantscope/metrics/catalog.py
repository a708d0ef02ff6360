"""The metric catalog: every reported metric described once — its key in a result's metrics,
its label in words with its unit, its standard-error field, its digits, which direction is
better, and what it means. Terminal tables, CSV/Markdown/JSON rows, the HTML report (column
heads, axis titles), the search budgets and the README's column table all read it.

>>> m = METRICS["kl_mean"]
>>> m.label, m.se, m.better.value
('KL divergence to the baseline (nats/token)', 'kl_se', 'lower')
>>> m.cell({"kl_mean": 0.01234, "kl_se": 0.0005})
'0.0123\\n± 0.0005'
>>> m.cell({"kl_mean": -4.8e-06, "kl_se": 2.5e-05}, one_line=True)  # KL cannot be below 0
'0 ± 2.5e-05'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Better(str, Enum):
    LOWER = "lower"
    HIGHER = "higher"


class Style(str, Enum):
    FIXED = "fixed"  # ``digits`` after the point, thousands separated
    SIG = "sig"  # ``digits`` significant digits (values spanning decades: KL)


@dataclass(frozen=True)
class Metric:
    """One metric: ``key`` in ``Result.metrics`` (and ``se``, its standard error's key);
    ``label`` in words with unit (axis titles); ``header``/``short`` the wide and narrow
    table heads; ``symbol`` and ``unit`` for budgets (``Δppl ≤ 2%``); ``scale`` multiplies
    the stored value for display (fractions shown as %); ``meaning`` is the README's text."""

    key: str
    label: str
    header: str
    short: str
    better: Better
    digits: int
    meaning: str
    se: str | None = None
    style: Style = Style.FIXED
    scale: float = 1.0
    sign: bool = False
    symbol: str = ""
    unit: str = ""
    paired: str | None = None  # a second metric shown in brackets (bits/weight of linears)
    # the lowest value the quantity can take: an estimate below it (KL's unbiased tail term can
    # dip under zero when the true KL is ~0) is shown at the bound, within its error; the
    # stored value (JSON) stays the estimate
    low: float | None = None

    def text(self, value: float | None, grouped: bool = True) -> str:
        """A value as tables show it; "–" when missing or NaN."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if self.low is not None and value < self.low:
            value = self.low
        value = value * self.scale
        if self.style is Style.SIG:
            return f"{value:.{self.digits}g}"
        spec = ("+" if self.sign else "") + ("," if grouped else "") + f".{self.digits}f"
        return format(value, spec)

    def cell(self, metrics: dict[str, float], one_line: bool = False) -> str:
        """This metric's table cell from a result's metrics: the value, ``± se`` on a second
        line (or the same, ``one_line``), the paired metric in brackets."""
        value = metrics.get(self.key)
        if self.paired:
            partner = METRICS[self.paired].text(metrics.get(self.paired))
            return f"{self.text(value)} ({partner})"
        if self.se is None:
            return self.text(value)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        se = METRICS_SE[self.se].text(metrics.get(self.se))
        return f"{self.text(value, grouped=False)}{' ' if one_line else chr(10)}± {se}"

    def describe_limit(self, limit: float) -> str:
        """A budget on this metric in words: ``Δppl ≤ 2%``."""
        return f"{self.symbol} ≤ {limit:g}{self.unit}"


def _se(metric: Metric) -> Metric:
    """The description of a metric's standard error (same digits, scale and style, no sign)."""
    label = f"standard error of {metric.label}"
    return Metric(
        metric.se or "",
        label,
        "se",
        "se",
        metric.better,
        metric.digits,
        "",
        style=metric.style,
        scale=metric.scale,
    )


_L, _H = Better.LOWER, Better.HIGHER
TABLE: tuple[Metric, ...] = (
    Metric(
        "weight_mb",
        "weight memory (MB)",
        "weights MB",
        "weights MB",
        _L,
        1,
        "bytes of weights as actually held, counted from the tensors: parameters, buffers "
        "and quantization state (bitsandbytes' absmax, codebooks, row scales), each tensor "
        "once (tied weights once). Read after the accuracy pass, because bitsandbytes "
        "repacks 4-bit weights at first use on CPU. MB = 2²⁰ bytes",
        symbol="weights",
        unit=" MB",
    ),
    Metric(
        "bits_per_weight",
        "bits per weight",
        "bits/weight",
        "bits/w",
        _L,
        2,
        "8 × weight bytes / logical weight count over all weights; in brackets the same over "
        "the quantized linear layers only (their weights plus their quantization state)",
        paired="linear_bits_per_weight",
    ),
    Metric(
        "ppl",
        "perplexity",
        "ppl ± se",
        "ppl",
        _L,
        3,
        "perplexity exp(mean NLL) over the scored tokens; se by the delta method, "
        "se(PPL) = PPL · se(mean NLL)",
        se="ppl_se",
    ),
    Metric(
        "dppl_pct",
        "perplexity change vs the baseline (%)",
        "Δppl %",
        "Δppl %",
        _L,
        2,
        "100·(PPL_q / PPL_base − 1), from ln(PPL_q/PPL_base) = mean(NLL_q − NLL_base); its se "
        "is the standard error of the *paired* per-token difference (the two losses are "
        "strongly correlated, so this is far smaller than combining the two perplexities' "
        "errors), times 100·PPL_q/PPL_base",
        se="dppl_pct_se",
        sign=True,
        symbol="Δppl",
        unit="%",
    ),
    Metric(
        "kl_mean",
        "KL divergence to the baseline (nats/token)",
        "KL mean ± se",
        "KL mean",
        _L,
        3,
        "KL(base ‖ quantized) per token over the full vocabulary, averaged; the JSON also "
        "has median, p90, p99 and max",
        se="kl_se",
        style=Style.SIG,
        symbol="KL",
        low=0.0,
    ),
    Metric(
        "kl_p99",
        "99th percentile of per-token KL (nats)",
        "KL p99",
        "KL p99",
        _L,
        3,
        "99th percentile of the per-token KL",
        style=Style.SIG,
        low=0.0,
    ),
    Metric(
        "top1_agree",
        "top-1 agreement with the baseline (%)",
        "top-1 agree %",
        "top-1 %",
        _H,
        2,
        "share of scored tokens where the quantized model's most likely next token is the "
        "baseline's ± se",
        se="top1_agree_se",
        scale=100.0,
    ),
    Metric(
        "dp_rms",
        "RMS change in the true token's probability",
        "Δp rms",
        "Δp rms",
        _L,
        3,
        "Δp = p_q(true token) − p_base(true token) per token; its RMS (the JSON also has its "
        "mean ± se)",
    ),
    Metric(
        "prefill_tps",
        "prefill throughput (tokens/s)",
        "prefill tok/s",
        "prefill t/s",
        _H,
        0,
        "one forward pass over 128 random tokens, batch 1; median of `--speed-reps` timed "
        "repetitions after one warm-up (JSON: min and max too)",
    ),
    Metric(
        "decode_tps",
        "decode throughput (tokens/s)",
        "decode tok/s",
        "decode t/s",
        _H,
        1,
        "24 greedy one-token steps with the KV cache after a 64-token prompt; median, same "
        "repetitions",
    ),
    Metric(
        "load_s",
        "load time (s)",
        "load s",
        "load s",
        _L,
        2,
        "wall time of `from_pretrained` for this config (quantization included)",
    ),
)
OTHER: tuple[Metric, ...] = (
    Metric(
        "linear_bits_per_weight",
        "bits per weight of the quantized linears",
        "bits/w linears",
        "bits/w lin",
        _L,
        2,
        "bits per weight over the quantized linear layers only",
    ),
    Metric(
        "quantize_s",
        "quantization time (s)",
        "quantize s",
        "quantize s",
        _L,
        2,
        "time spent quantizing after loading (NaN where the library quantizes while loading)",
    ),
    Metric(
        "server_peak_mb",
        "serving engine's peak resident memory (MB)",
        "server peak MB",
        "server MB",
        _L,
        0,
        "the engine server's processes' resident memory summed, sampled every 0.2 s while "
        "the config was measured; its peak",
    ),
    Metric(
        "peak_rss_mb",
        "peak resident memory (MB)",
        "peak RSS MB",
        "RSS MB",
        _L,
        0,
        "peak resident memory of the process while the config was measured",
    ),
)
METRICS: dict[str, Metric] = {m.key: m for m in (*TABLE, *OTHER)}
METRICS_SE: dict[str, Metric] = {m.se: _se(m) for m in TABLE if m.se}
HEADLINE = ("weight_mb", "ppl", "kl_mean", "top1_agree", "decode_tps")  # compared across runs


SERVED = ("out_tps", "req_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")
_SERVED_WORDS = {
    "out_tps": ("output tokens/s", _H, 1),
    "req_s": ("requests/s", _H, 2),
    "ttft_p50_ms": ("time to first token, median (ms)", _L, 0),
    "ttft_p99_ms": ("time to first token, p99 (ms)", _L, 0),
    "itl_p50_ms": ("inter-token latency, median (ms)", _L, 1),
    "itl_p99_ms": ("inter-token latency, p99 (ms)", _L, 1),
}


def metric(key: str) -> Metric:
    """The catalog's description of ``key``, including a served config's load-test metrics
    (``serve_c{N}_{what}``: at concurrency N).

    >>> metric("serve_c16_out_tps").label
    'output tokens/s at concurrency 16 (served)'
    """
    if key in METRICS:
        return METRICS[key]
    level, _, what = key.removeprefix("serve_c").partition("_")
    if not key.startswith("serve_c") or what not in _SERVED_WORDS or not level.isdigit():
        raise KeyError(key)
    words, better, digits = _SERVED_WORDS[what]
    label = f"{words} at concurrency {level} (served)"
    return Metric(key, label, label, label, better, digits, label)


def served_keys(levels: list[int]) -> tuple[str, ...]:
    """The load-test metrics of these concurrency levels, level by level, and the server's
    peak memory."""
    return (*(f"serve_c{c}_{w}" for c in levels for w in SERVED), "server_peak_mb")


def summary_keys() -> tuple[str, ...]:
    """The keys of the summary rows (CSV, Markdown, JSON): each table metric, then its se."""
    return tuple(k for m in TABLE for k in (m.key, m.se) if k)


def markdown_table() -> str:
    """The README's column table, from the catalog (a test keeps the README in step)."""
    config = "the config's canonical name: method plus every non-default parameter"
    rows = ["| column | meaning |", "|---|---|", f"| config | {config} |"]
    rows += [f"| {m.header} | {m.meaning} |" for m in TABLE]
    return "\n".join(rows)
