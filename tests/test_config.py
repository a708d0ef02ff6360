"""Configs: the grammar, validation from the fields' metadata, canonical names that round-trip
(hypothesis), and every config string of the README and the tests still naming what the
release before the per-family redesign named it (``fixtures/config_names.json``, written by
that release)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantscope.config import (
    BUILTIN,
    Bnb4,
    Bnb4Type,
    DataSpec,
    DType,
    ModelKind,
    QuantConfig,
    RunSpec,
    config_class,
    model_spec,
    names,
    parse_config,
    parse_config_list,
)
from quantscope.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"


def test_parse_names_are_canonical_and_round_trip():
    config = parse_config("bnb-nf4[double_quant=true,compute_dtype=bf16]")
    assert isinstance(config, Bnb4) and config.quant_type is Bnb4Type.NF4 and config.double_quant
    assert config.method == "bnb-nf4"
    assert parse_config(config.name) == config and str(config) == config.name
    assert parse_config("bnb-nf4[double_quant=false]").name == "bnb-nf4"  # defaults vanish


def test_every_config_string_names_what_the_previous_release_named_it():
    """59 strings parse to the same canonical name, 16 bad ones are still refused."""
    expected = json.loads((FIXTURES / "config_names.json").read_text())
    assert len(expected) >= 70
    for text, old in expected.items():
        if "name" in old:
            assert parse_config(text).name == old["name"], text
        else:
            with pytest.raises(UserError):
                parse_config(text)


def test_skip_modules_parse_as_patterns():
    assert parse_config("bnb-int8[skip=lm_head;down_proj]").skip == ("lm_head", "down_proj")


def test_list_keeps_commas_inside_brackets_and_drops_duplicates():
    configs = parse_config_list("fp32,bnb-nf4[double_quant=true,compute_dtype=bf16],fp32")
    assert [c.name for c in configs] == ["fp32", "bnb-nf4[compute_dtype=bf16,double_quant=true]"]


def test_lists_of_names_and_config_objects_are_configs_too():
    nf4 = parse_config("bnb-nf4")
    assert parse_config_list(["bf16", nf4, "bf16,rtn[bits=3]"]) == (
        parse_config("bf16"),
        nf4,
        parse_config("rtn[bits=3]"),
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bnb-nf5", "Did you mean 'bnb-nf4'"),
        ("bnb-nf5", "Available: fp32, bf16"),
        ("bnb-int8[threshhold=5]", "Did you mean 'threshold'"),
        ("bnb-int8[threshold=abc]", "must be a number"),
        ("bnb-int8[threshold=-1]", "must be positive"),
        ("bnb-nf4[compute_dtype=int3]", "compute_dtype must be one of"),
        ("fp32[threshold=5]", "takes no parameter"),
        ("bnb-int8[double_quant=true]", "takes no parameter 'double_quant'"),
        ("bnb-nf4[double_quant]", "needs a value"),
        ("rtn[group=33]", "even number of weights"),
        ("hqq[bits=5]", "bits must be one of 8, 4, 3, 2"),
        ("gptq[bits=5]", "packs 2, 3, 4 or 8 bits"),
        ("gptq[seqlen=8]", "seqlen must be at least 16"),
        ("gptq[calib=/no/such/file.txt]", "No such file"),
    ],
)
def test_bad_configs_explain_themselves(text, fragment):
    with pytest.raises(UserError, match=fragment):
        parse_config(text)


def test_every_registered_name_parses_to_its_class():
    assert names()[:3] == ["fp32", "bf16", "fp16"]
    for name in names():
        config = parse_config(name)
        assert config.method == name and isinstance(config, config_class(name))


def test_lm_head_is_kept_by_every_config():
    linears = ["model.layers.0.mlp.down_proj", "lm_head"]
    for name in names():
        assert parse_config(name).select(linears) == ["model.layers.0.mlp.down_proj"]
    assert parse_config("rtn[include=lm_head]").select(linears) == []  # skip wins
    assert parse_config("rtn[skip=down_proj]").select(linears) == []


# --- hypothesis: generated configs round-trip through their canonical name ------------------

_PATTERN = st.text("abcdefghijklmnopqrstuvwxyz0123456789._*", min_size=1, max_size=12)


def _value(config_field, calib: str):
    """A strategy of valid values of one parameter, from its type and metadata."""
    m, default = config_field.metadata, config_field.default
    if config_field.name in ("include", "skip"):
        return st.lists(_PATTERN, max_size=3).map(tuple)
    if config_field.name == "calib":
        return st.just(calib)
    if config_field.name == "file":
        return st.sampled_from(["", "/models/a.gguf", "/tmp/x y.gguf"])
    if m["choices"]:
        return st.sampled_from(m["choices"])
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, float):
        low = m["low"] if m["low"] is not None else 0.01
        high = m["high"] if m["high"] is not None else 100.0
        return st.floats(low, high, allow_nan=False).map(lambda v: round(v, 3))
    if isinstance(default, int):
        low, high = int(m["low"] or 0), int(m["high"] if m["high"] is not None else 4096)
        values = st.integers(low, high)
        return values.map(lambda v: v - v % m["step"]) if m["step"] else values
    if config_field.name == "path":  # a checkpoint's hub id (folders: test_checkpoint)
        return st.sampled_from(["", "org/Model-AWQ", "nobody/x-W4A16"])
    if config_field.name == "revision":
        return st.sampled_from(["", "main", "0a1b2c3"])
    if config_field.name == "qtype":
        return st.sampled_from(["Q8_0", "Q4_K_M", "IQ4_NL", "F32"])
    if config_field.name == "dtype":
        return st.sampled_from([None, *DType])
    return st.sampled_from(list(type(default)))


@st.composite
def configs(draw, calib: str):
    cls = draw(st.sampled_from(BUILTIN))
    name = draw(st.sampled_from(list(cls.VARIANTS)))
    values = {f.name: draw(_value(f, calib)) for f in cls.parameters()}
    return cls(**cls.VARIANTS[name], **values)


_CALIB = FIXTURES / "config_names.json"  # any existing file serves as a calibration path


@settings(max_examples=300, deadline=None)
@given(config=configs(str(_CALIB.resolve())))
def test_canonical_names_round_trip(config: QuantConfig):
    assert parse_config(config.name) == config
    assert parse_config(config.name).name == config.name


@settings(max_examples=100, deadline=None)
@given(config=configs(str(_CALIB.resolve())))
def test_labels_are_not_identity_and_lora_is(config: QuantConfig, tmp_path_factory):
    assert replace(config, label="x") == config
    folder = tmp_path_factory.getbasetemp() / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    with_adapter = parse_config(f"{config.name}+lora={folder}")
    assert with_adapter != config and with_adapter.lora == str(folder.resolve())
    assert parse_config(with_adapter.name) == with_adapter


def test_window_settings_are_validated():
    with pytest.raises(UserError, match="--stride"):
        DataSpec(context=128, stride=256)
    with pytest.raises(UserError, match="--context"):
        DataSpec(context=1)


def test_run_spec_validates_device():
    with pytest.raises(UserError, match="--device"):
        RunSpec(device="tpu")


def test_model_spec_infers_kind(tmp_path):
    assert model_spec(None).kind is ModelKind.BUNDLED
    assert model_spec("org/name").kind is ModelKind.HUB
    assert model_spec(str(tmp_path)).kind is ModelKind.LOCAL_DIR
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert model_spec(str(gguf)).kind is ModelKind.GGUF_FILE
    with pytest.raises(UserError, match="No such model"):
        model_spec(str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"not a \.gguf"):
        (tmp_path / "x.txt").write_text("x")
        model_spec(str(tmp_path / "x.txt"))
