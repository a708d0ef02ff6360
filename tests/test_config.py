import pytest

from quantscope.config import (
    DataSpec,
    Method,
    ModelKind,
    QuantConfig,
    RunSpec,
    model_spec,
    parse_config,
    parse_config_list,
)
from quantscope.errors import UserError


def test_parse_names_are_canonical_and_round_trip():
    config = parse_config("bnb-nf4[double_quant=true,compute_dtype=bf16]")
    assert config.method is Method.BNB_NF4 and config.double_quant
    assert parse_config(config.name) == config
    assert parse_config("bnb-nf4[double_quant=false]").name == "bnb-nf4"  # defaults vanish


def test_skip_modules_parse_as_patterns():
    assert parse_config("bnb-int8[skip=lm_head;down_proj]").skip == ("lm_head", "down_proj")


def test_list_keeps_commas_inside_brackets_and_drops_duplicates():
    configs = parse_config_list("fp32,bnb-nf4[double_quant=true,compute_dtype=bf16],fp32")
    assert [c.name for c in configs] == ["fp32", "bnb-nf4[compute_dtype=bf16,double_quant=true]"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bnb-nf5", "Did you mean 'bnb-nf4'"),
        ("bnb-int8[threshhold=5]", "Did you mean 'threshold'"),
        ("bnb-int8[threshold=abc]", "must be a number"),
        ("bnb-int8[threshold=-1]", "must be positive"),
        ("bnb-nf4[compute_dtype=int3]", "compute_dtype must be one of"),
        ("fp32[threshold=5]", "takes no parameter"),
        ("bnb-nf4[double_quant]", "needs a value"),
    ],
)
def test_bad_configs_explain_themselves(text, fragment):
    with pytest.raises(UserError, match=fragment):
        parse_config(text)


def test_config_rejects_parameters_of_other_methods():
    with pytest.raises(UserError, match="takes no parameter 'double_quant'"):
        QuantConfig(Method.BNB_INT8, double_quant=True)


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
