"""The specs of the decisions over a stored run: ``judge`` (``show --margin``), ``compare``
(``compare --pair``) and ``recommend``, from the options both front doors share."""

from __future__ import annotations

from collections.abc import Iterable

from quantscope import config as cfg
from quantscope.decide.stored import DecisionSpec
from quantscope.errors import UserError
from quantscope.results import RunReport
from quantscope.specs.inputs import PathLike, path_or_none


def judge_spec(
    run: str | RunReport = "latest", *, margin: str | None = None, store: PathLike | None = None
) -> DecisionSpec:
    """The decision of ``quantscope show RUN --margin`` (``quantscope.judge``)."""
    return DecisionSpec(run=run, store=path_or_none(store), margins=cfg.parse_margins(margin))


def compare_spec(
    run: str | RunReport = "latest",
    *,
    pair: str | Iterable[str] | None = None,
    store: PathLike | None = None,
) -> DecisionSpec:
    """Two configs of a run token by token (``quantscope compare RUN --pair A,B``)."""
    found = cfg.split_config_list(pair) if isinstance(pair, str) else list(pair or [])
    names = [n.strip() for n in found]
    if len(names) != 2 or not all(names):
        shown = pair if isinstance(pair, str) else ",".join(names)
        raise UserError(f"--pair takes two config names of the run, 'A,B', got '{shown}'.")
    return DecisionSpec(run=run, store=path_or_none(store), pair=(names[0], names[1]))


def recommend_spec(
    run: str | RunReport = "latest",
    *,
    max_ppl_increase: str | float | None = None,
    max_mb: float | None = None,
    min_decode_tps: float | None = None,
    margin: str | None = None,
    prefer: str = "size",
    store: PathLike | None = None,
) -> DecisionSpec:
    """The config to ship under a budget (``quantscope recommend``)."""
    margins = cfg.parse_margins(margin)
    budget = cfg.Budget(
        max_ppl_increase=cfg.parse_percent(max_ppl_increase, "--max-ppl-increase"),
        max_mb=max_mb,
        min_decode_tps=min_decode_tps,
        margins=margins,
        prefer=prefer,
    )
    return DecisionSpec(run=run, store=path_or_none(store), margins=margins, budget=budget)
