"""The Python front door: ``quantscope.run``, ``sensitivity``, ``search``, ``recover`` and
``sweep`` take the command line's options by the same names (``store``, ``tasks``,
``batch_size``, …), and the command line builds its specs with the same functions
(:mod:`quantscope.specs`: ``run_spec``, ``sensitivity_spec``, ``search_spec``, …), so the two
cannot drift apart.

Configs may be a comma list, a list of names, config objects or saved config files; text a
path, a list of paths, or the text itself (a string with spaces). An unknown keyword answers
like the command line ("did you mean"), and every user error raises
:class:`~quantscope.errors.UserError` with the sentence the command line prints. While a call
runs, the libraries' own output goes to the debug log (:mod:`quantscope.quiet`) and
quantscope draws one progress bar per stage (``progress=False``: none).

>>> import quantscope
>>> quantscope.run(configs="bf16", stores="x.db")
Traceback (most recent call last):
...
quantscope.errors.UserError: quantscope.run has no option 'stores'. Did you mean 'store'? ...
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from quantscope import config as cfg
from quantscope.decide import Decision, Recommendation, stored
from quantscope.decide.stored import DecisionSpec
from quantscope.errors import UserError
from quantscope.events import BarEvents, Events, LogEvents
from quantscope.mixed import SearchResult, SearchSpec, SensitivitySpec
from quantscope.mixed import search as run_search
from quantscope.mixed import sensitivity as study_units
from quantscope.quiet import captured
from quantscope.recovery import RecoverSpec, Recovery
from quantscope.recovery import recover as run_recover
from quantscope.results import RunReport, SensitivityStudy
from quantscope.runner import run as run_one
from quantscope.specs import (
    compare_spec,
    judge_spec,
    read_prompts,
    recommend_spec,
    recover_spec,
    run_spec,
    search_spec,
    sensitivity_spec,
    sweep_spec,
    text_files,
    unknown_option,
)
from quantscope.sweeps import SweepReport, run_sweep

if TYPE_CHECKING:  # pandas is imported when compare returns its table
    import pandas as pd

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "compare",
    "judge",
    "read_prompts",
    "recommend",
    "recover",
    "recover_spec",
    "run",
    "run_spec",
    "search",
    "search_spec",
    "sensitivity",
    "sensitivity_spec",
    "sweep",
    "sweep_spec",
    "text_files",
    "unknown_option",
]


def _front(builder: Callable[..., Any]) -> Callable[[F], F]:
    """The API function ``fn(spec, events)`` called with ``builder``'s keywords (the CLI's
    option names) and ``progress``; unknown keywords answer "did you mean"; the libraries'
    output goes to the debug log meanwhile."""
    signature = inspect.signature(builder)
    progress = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=True)
    names = [*signature.parameters, "progress"]

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **options: Any) -> Any:

            for word in options:
                if word not in names:
                    raise UserError(unknown_option(fn.__name__, word, names))
            events: Events = BarEvents() if options.pop("progress", True) else LogEvents()
            with captured():
                try:
                    return fn(builder(*args, **options), events)
                finally:
                    if isinstance(events, BarEvents):
                        events.close()

        params = [*signature.parameters.values(), progress]
        del wrapper.__wrapped__  # its signature is the builder's, not fn's (help, the API docs)
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=params, return_annotation=inspect.signature(fn).return_annotation
        )
        return wrapper  # type: ignore[return-value]

    return decorate


@_front(run_spec)
def run(spec: cfg.RunSpec, events: Events) -> RunReport:
    """Measure each config against the full-precision baseline (``quantscope run``); a
    :class:`~quantscope.results.RunReport`."""

    return run_one(spec, events)


@_front(sensitivity_spec)
def sensitivity(spec: SensitivitySpec, events: Events) -> SensitivityStudy:
    """Rank the units by the KL they cause (``quantscope sensitivity``); a study."""

    return study_units(spec, events)


@_front(search_spec)
def search(spec: SearchSpec, events: Events) -> SearchResult:
    """The smallest mix that meets the budget, verified and saved (``quantscope search``)."""

    return run_search(spec, events)


@_front(recover_spec)
def recover(spec: RecoverSpec, events: Events) -> Recovery:
    """LoRA adapters trained toward the baseline (``quantscope recover``); a recovery."""

    return run_recover(spec, events)


@_front(sweep_spec)
def sweep(spec: tuple[Any, dict[str, Any]], events: Events) -> SweepReport:
    """A study of models × configs × texts × tasks (``quantscope sweep``); a study report."""

    study, how = spec
    return run_sweep(study, events, **how)


@_front(judge_spec)
def judge(spec: DecisionSpec, events: Events) -> Decision:
    """Each config of a stored run against the baseline at ``margin`` (``"ppl=1%,kl=0.01"``),
    the groups, the noise floor and the recommendation within that margin (``quantscope show
    RUN --margin``). ``run``: a run id, "latest", or the report ``quantscope.run`` returned."""
    return stored.judge(spec)


@_front(compare_spec)
def compare(spec: DecisionSpec, events: Events) -> pd.DataFrame:
    """Two configs of one run token by token (``quantscope compare RUN --pair A,B``): a
    DataFrame with Δ ± se, p and the 95% CI per metric (``pair=("bnb-nf4", "bnb-int8")``)."""
    import pandas as pd

    return pd.DataFrame(stored.compare(spec))


@_front(recommend_spec)
def recommend(spec: DecisionSpec, events: Events) -> Recommendation:
    """The config to ship under the budget (``quantscope recommend``): its ``reason``,
    ``runners_up`` and ``code``."""
    return stored.recommend(spec)
