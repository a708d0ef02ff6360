"""quantscope: what quantizing a language model costs in accuracy and buys in memory and speed.

From Python (the same runs as the command line, with the command line's option names)::

    >>> import quantscope
    >>> report = quantscope.run(configs=["bf16", "bnb-nf4"], tokens=1024)  # doctest: +SKIP
    >>> report  # doctest: +SKIP
    >>> report.plot("kl_vs_mb")  # doctest: +SKIP
    >>> report.to_dataframe()[["config", "ppl", "kl_mean", "weight_mb"]]  # doctest: +SKIP

In Jupyter a report shows as an HTML table and ``report.plot(NAME)`` gives a plotly figure.
``sensitivity``, ``search``, ``recover`` and ``sweep`` follow ``quantscope sensitivity``,
``search``, ``recover`` and ``sweep``; ``judge``, ``compare`` and ``recommend`` (a stored
run judged at a margin, two of its configs token by token, the config to ship and its
loading code) follow ``show --margin``, ``compare --pair`` and ``recommend``. Importing this
package imports no optional backend library; torch and transformers are imported when a run
starts.
"""

from __future__ import annotations

from quantscope.api import compare, judge, recommend, recover, run, search, sensitivity, sweep
from quantscope.config import DataSpec, DType, ModelSpec, QuantConfig, RunSpec
from quantscope.errors import UserError
from quantscope.report import notebook as _notebook  # noqa: F401  (registers the notebook views)

__version__ = "0.1.0"
__all__ = [
    "DType",
    "DataSpec",
    "ModelSpec",
    "QuantConfig",
    "RunSpec",
    "UserError",
    "compare",
    "judge",
    "recommend",
    "recover",
    "run",
    "search",
    "sensitivity",
    "sweep",
]
