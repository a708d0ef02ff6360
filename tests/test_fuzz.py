"""Parsers of what users write, fuzzed with hypothesis: any input gives a parsed value or a
:class:`UserError` (one sentence), never another exception. Counts: the ``max_examples`` of
each test (the closing note of issue 31 quotes them)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantscope.config import QuantConfig, names, parse_config, parse_config_list
from quantscope.config.quant import read_config_file
from quantscope.errors import UserError
from quantscope.sweeps.sweep_file import parse_sweep, read_sweep

EXAMPLES = 1000
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
)

# pieces of the config grammar, recombined: a name, brackets, parameters, +kv/+lora/+engine
_WORDS = st.sampled_from(
    [
        *names(),
        "bits",
        "group",
        "skip",
        "include",
        "dtype",
        "qtype",
        "how",
        "path",
        "revision",
        "=",
        ",",
        "[",
        "]",
        "+",
        "+kv=",
        "+lora=",
        "+engine=",
        "vllm",
        "quanto-int4",
        "q8_0",
        "Q4_K_M",
        "down_proj",
        "true",
        "false",
        "0",
        "-1",
        "64",
        "1e309",
        "nan",
        " ",
        "\x00",
        "é",
    ]
)
_NAMES = st.one_of(st.text(max_size=40), st.lists(_WORDS, max_size=12).map("".join))

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    [
        "name",
        "models",
        "configs",
        "texts",
        "tasks",
        "settings",
        "store",
        "model",
        "checkpoints",
        "tokens",
        "context",
        "until_decided",
        "x",
    ]
)
_SWEEPS = st.dictionaries(_KEYS, _VALUES, max_size=6)


@FUZZ
@given(text=_NAMES)
def test_config_names(text: str) -> None:
    try:
        found = parse_config_list(text)
    except UserError as err:
        assert str(err)
        return
    assert all(isinstance(c, QuantConfig) for c in found)
    for config in found:  # a name that parses round-trips
        assert parse_config(config.name) == config


@FUZZ
@given(body=_SWEEPS)
def test_sweep_mappings(body: dict, tmp_path_factory) -> None:
    folder = tmp_path_factory.getbasetemp()
    try:
        parse_sweep(body, folder)
    except UserError as err:
        assert str(err)


@FUZZ
@given(body=_VALUES | _SWEEPS)
def test_sweep_files(body: object, tmp_path_factory) -> None:
    path = Path(tmp_path_factory.getbasetemp()) / "fuzz.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    try:
        read_sweep(path)
    except UserError as err:
        assert str(err)


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_sweep_files_of_any_bytes(raw: bytes, tmp_path_factory) -> None:
    path = Path(tmp_path_factory.getbasetemp()) / "bytes.yaml"
    path.write_bytes(raw)
    try:
        read_sweep(path)
    except UserError as err:
        assert str(err)


@FUZZ
@given(
    body=_VALUES
    | st.fixed_dictionaries({"config": _NAMES}, optional={"format": _SCALARS, "label": _SCALARS})
)
def test_config_files(body: object, tmp_path_factory) -> None:
    path = Path(tmp_path_factory.getbasetemp()) / "fuzz.json"
    path.write_text(json.dumps(body), encoding="utf-8")
    try:
        found = read_config_file(path)
    except UserError as err:
        assert str(err)
        return
    assert isinstance(found, QuantConfig)


def _said(args: list[str]) -> str:
    from typer.testing import CliRunner

    from quantscope.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.count("error:") == 1
    return " ".join(result.output.split())


def test_damaged_and_foreign_files_are_one_sentence_and_exit_2(tmp_path: Path) -> None:
    import sqlite3

    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)  # a header, then noise
    assert "as a results database (file is not a database)" in _said(
        ["runs", "--store", str(damaged)]
    )
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as con:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute("INSERT INTO meta VALUES ('schema', '9')")
    assert "written by a newer quantscope (results schema 9; this one reads up to 4)" in _said(
        ["runs", "--store", str(newer)]
    )
    listing = tmp_path / "sweep.yaml"
    listing.write_text("- models\n- configs\n")
    assert "must be a YAML mapping with models and configs" in _said(["sweep", str(listing)])
    typed = tmp_path / "mix.json"
    typed.write_text(json.dumps(["bnb-nf4"]))  # written by hand: a list, not a mapping
    assert "is not a quantscope config file" in _said(["run", "--configs", str(typed)])
