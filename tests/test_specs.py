"""One vocabulary: every command builds its spec by keyword from the options of the same names,
so a value reaches only the parameter of its own name. Each numeric option gets a value no
other option has: a command that passed two same-typed values in each other's places (tokens
and context, say) builds another spec than the API's and fails here."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from quantscope import specs
from quantscope.cli import app


class _Built(Exception):
    """Raised by the stand-in for the measuring function: carries the spec it was given."""

    def __init__(self, spec: object) -> None:
        self.spec = spec


def _capture(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> None:
    def stand_in(spec: object, *args: object, **kwargs: object) -> object:
        raise _Built(spec)

    monkeypatch.setattr(f"{module}.{name}", stand_in)


def _built(args: list[str]) -> object:
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, _Built), result.output
    return result.exception.spec


RUN = {
    "tokens": 1111,
    "context": 222,
    "stride": 33,
    "batch_size": 5,
    "seed": 7,
    "ref_topk": 44,
    "ref_samples": 9,
    "max_new_tokens": 6,
    "speed_reps": 2,
    "task_limit": 17,
}


def test_run_builds_the_api_spec_option_by_option(monkeypatch: pytest.MonkeyPatch) -> None:
    _capture(monkeypatch, "quantscope.cli.run", "run_one")  # what the command calls
    args = ["run", "--configs", "bf16,rtn[bits=3]", "--depths", "0,1k"]
    for name, value in RUN.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    spec = _built(args)
    assert spec == specs.run_spec(configs="bf16,rtn[bits=3]", depths="0,1k", **RUN)
    assert (spec.data.tokens, spec.data.context, spec.data.stride) == (1111, 222, 33)


SEARCH = {
    "max_kl": 0.123,
    "max_mb": 456.0,
    "tokens": 1111,
    "context": 222,
    "stride": 33,
    "calib_tokens": 777,
    "calib_context": 88,
    "calib_stride": 44,
    "tries": 5,
    "batch_size": 3,
    "speed_reps": 2,
    "max_new_tokens": 6,
}


def test_search_builds_the_api_spec_option_by_option(monkeypatch: pytest.MonkeyPatch) -> None:
    _capture(monkeypatch, "quantscope.cli.mixed", "run_search")
    args = ["search", "--config", "bnb-nf4", "--max-ppl-increase", "2.5%"]
    for name, value in SEARCH.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    spec = _built(args)
    assert spec == specs.search_spec("bnb-nf4", max_ppl_increase="2.5%", **SEARCH)
    assert spec.budget.max_kl == 0.123 and spec.budget.max_mb == 456.0


def test_recommend_builds_the_api_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    _capture(monkeypatch, "quantscope.decide.stored", "judge")
    args = [
        "recommend",
        "latest",
        "--max-ppl-increase",
        "3%",
        "--max-mb",
        "120",
        "--min-decode-tps",
        "9",
        "--margin",
        "kl=0.02",
        "--prefer",
        "speed",
    ]
    spec = _built(args)
    expected = specs.recommend_spec(
        "latest",
        max_ppl_increase="3%",
        max_mb=120.0,
        min_decode_tps=9.0,
        margin="kl=0.02",
        prefer="speed",
    )
    assert spec == expected and spec.budget.max_mb == 120.0 and spec.budget.min_decode_tps == 9.0


def test_builders_take_their_options_by_keyword_only() -> None:
    with pytest.raises(TypeError):
        specs.run_spec(None, "bf16")  # type: ignore[misc]
    with pytest.raises(TypeError):
        specs.search_spec("bnb-nf4", 0.1)  # type: ignore[misc]


def test_one_percent_parser_names_the_option_it_read() -> None:
    from quantscope.errors import UserError

    with pytest.raises(UserError, match=r"^--max-ppl-increase abc is not a number"):
        specs.recommend_spec(max_ppl_increase="abc")
