"""llm-compressor's recipes, made in its own environment (``toolenv``; ``make tools`` builds it),
checked against computations written here from the formats' definitions: a W4A16 layer computes
with the int4 values and scales stored in its file; W8A8 and FP8 quantize each token's
activations as their schemes say; AWQ's weights take at most 16 values per group; and a
checkpoint saved by llm-compressor itself, given as a folder, equals the same recipe made by
quantscope.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from conformance import IDS, BackendConformance, kl_of, load, logits
from conftest import needs_tool
from quantscope import models, toolenv
from quantscope.backends import checkpoint, gptq, llmc
from quantscope.cache import read_made
from quantscope.config import model_spec, parse_config

SMALL = "samples=16,seqlen=64"  # 1,024 calibration tokens: a few seconds per recipe here


@pytest.fixture(scope="module", autouse=True)
def _llmcompressor_built() -> None:
    needs_tool(toolenv.LLMCOMPRESSOR)


class TestLlmcW4a16(BackendConformance):
    config = f"llmc-w4a16[group=32,{SMALL}]"
    max_kl = 0.4  # measured 0.19 (gptq at the same width: 0.196)
    # compressed-tensors decompresses to float32 at load in transformers: what is held is
    # float32 plus a float32 scale per 32 weights (33 bits per weight)
    bits = (32.9, 33.1)


@pytest.fixture(scope="module")
def made(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each recipe made once on the tiny model (a cache of this module's own)."""
    found = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTSCOPE_CACHE", str(tmp_path_factory.mktemp("llmc-cache")))
        ms = model_spec(str(tiny_model_dir))
        files = models.resolve(ms)
        for name in ("w4a16[group=32", "awq[group=32", "w8a8[", "fp8["):
            config = parse_config(f"llmc-{name},{SMALL}]".replace("[,", "["))
            found[config.method] = llmc.make(files, ms, config)[0]
    return found


def _layer(loaded: Any, name: str = "model.layers.1.mlp.down_proj") -> Any:
    return loaded.model.get_submodule(name)


def test_w4a16_computes_with_the_int4_values_and_scales_in_its_file(
    made: dict[str, Path], tiny_model_dir: Path
) -> None:
    from safetensors.torch import load_file

    folder = made["llmc-w4a16"]
    assert checkpoint.quantization(folder)["format"] == "pack-quantized"
    tensors = load_file(str(folder / "model.safetensors"))
    loaded = load(tiny_model_dir, str(folder))
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        packed = tensors[f"{name}.weight_packed"]  # (out, in/8) int32, low nibble first
        shifts = torch.arange(0, 32, 4, dtype=torch.int32)
        nibbles = (packed.unsqueeze(2) >> shifts.view(1, 1, -1)) & 0xF
        q = nibbles.reshape(packed.shape[0], -1).float() - 8  # stored with an offset of 8
        scale = tensors[f"{name}.weight_scale"].float()  # (out, in/32)
        weight = q * scale.repeat_interleave(32, dim=1)
        assert torch.equal(_layer(loaded, name).weight.float(), weight)
    assert "decompressed to float" in loaded.library and "pack-quantized" in loaded.library


def test_awq_weights_take_sixteen_values_per_group(
    made: dict[str, Path], tiny_model_dir: Path
) -> None:
    folder = made["llmc-awq"]
    groups = checkpoint.quantization(folder)["config_groups"]
    assert groups["group_0"]["weights"]["symmetric"] is False  # AWQ's asymmetric int4
    weight = _layer(load(tiny_model_dir, str(folder))).weight.detach()
    per_group = weight.reshape(weight.shape[0], -1, 32)
    distinct = max(len(torch.unique(g)) for row in per_group for g in row)
    assert 8 < distinct <= 16  # 4 bits; a float weight would give 32 distinct values


def _qdq_tokens(x: torch.Tensor, fp8: bool) -> torch.Tensor:
    """Each token (row) quantized symmetrically with its own scale, then de-quantized; the
    scale maps the token's largest magnitude to half the type's range (compressed-tensors'
    convention: 255 / 2 for int8, 448 for FP8 E4M3)."""
    top = 448.0 if fp8 else 127.5
    scale = x.abs().amax(dim=-1, keepdim=True) / top
    if fp8:
        return torch.clamp(x / scale, -448, 448).to(torch.float8_e4m3fn).float() * scale
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


@pytest.mark.parametrize("scheme", ["llmc-w8a8", "llmc-fp8"])
def test_dynamic_activation_schemes_quantize_each_token(
    scheme: str, made: dict[str, Path], tiny_model_dir: Path
) -> None:
    from safetensors.torch import load_file

    folder = made[scheme]
    fp8 = scheme == "llmc-fp8"
    assert checkpoint.quantization(folder)["format"] == (
        "float-quantized" if fp8 else "int-quantized"
    )
    loaded = load(tiny_model_dir, str(folder))
    assert "activations quantize-dequantized" in loaded.library
    layer = _layer(loaded)
    tensors = load_file(str(folder / "model.safetensors"))
    stored = tensors["model.layers.1.mlp.down_proj.weight"].float()
    scale = tensors["model.layers.1.mlp.down_proj.weight_scale"].float()  # per channel
    assert torch.equal(layer.weight.float(), stored * scale)
    # (batch, tokens, features), as in the model: compressed-tensors reads a 2-D input's
    # first dimension as the batch, not as tokens
    x = torch.randn(1, 6, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = layer(x)
    expected = _qdq_tokens(x, fp8) @ layer.weight.float().T
    plain = x @ layer.weight.float().T
    # float32 throughout: measured equal to the bit on the bundled model's layer
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert not torch.allclose(got, plain, rtol=0, atol=1e-5 * float(plain.abs().max()))


def test_a_recipe_is_made_once_and_reports_its_calibration_time(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load(tiny_model_dir, "llmc-fp8")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("made again")

    monkeypatch.setattr(toolenv, "run", refuse)
    second = load(tiny_model_dir, "llmc-fp8")
    assert second.quantize_s == first.quantize_s > 0
    ms = model_spec(str(tiny_model_dir))
    folder, meta = llmc.make(models.resolve(ms), ms, parse_config("llmc-fp8"))
    assert read_made(folder) == meta and "llmcompressor 0.14.0.1" in first.library
    assert torch.equal(logits(first), logits(second))


_USER_SCRIPT = """
import json, sys
import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, rows_file, out = sys.argv[1:4]
rows = json.load(open(rows_file))
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
recipe = GPTQModifier(
    ignore=["lm_head"],
    config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
)
data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=64,
        num_calibration_samples=len(rows), shuffle_calibration_samples=False)
model.save_pretrained(out, save_compressed=True)
AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
"""


def test_w4a16_saved_by_llm_compressor_equals_quantscopes_recipe(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A user's own llm-compressor script (its Python API, not quantscope's YAML), on the same
    calibration rows, saved and given as a folder: the same logits as ``llmc-w4a16``."""
    config = f"llmc-w4a16[group=32,{SMALL}]"
    ms = model_spec(str(tiny_model_dir))
    rows, _ = gptq.calibration(models.resolve(ms), ms, parse_config(f"gptq[{SMALL}]"))
    (tmp_path / "rows.json").write_text(json.dumps([r["input_ids"] for r in rows]))
    script = tmp_path / "user.py"
    script.write_text(_USER_SCRIPT)
    exe = toolenv.python(toolenv.LLMCOMPRESSOR)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [str(tiny_model_dir), str(tmp_path / "rows.json"), str(tmp_path / "theirs")]
    done = subprocess.run([str(exe), str(script), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = load(tiny_model_dir, str(tmp_path / "theirs"))
    mine = load(tiny_model_dir, config)
    assert torch.equal(logits(theirs), logits(mine))


def test_recipes_rank_as_their_bit_widths(made: dict[str, Path], tiny_model_dir: Path) -> None:
    """On the tiny random model (measured KL to fp32): w8a8 0.0027, fp8 0.048 (E4M3 keeps 3
    mantissa bits: coarser than int8 per channel on Gaussian weights), awq 0.20, w4a16 0.23:
    each 8-bit scheme at least 4× below each 4-bit one; asserted with 2.5×."""
    kls = {name: kl_of(tiny_model_dir, str(folder)) for name, folder in made.items()}
    eight, four = (kls["llmc-w8a8"], kls["llmc-fp8"]), (kls["llmc-w4a16"], kls["llmc-awq"])
    assert 2.5 * max(eight) < min(four), kls
    assert kls["llmc-w8a8"] < kls["llmc-fp8"], kls


@pytest.mark.parametrize("scheme", ["llmc-w8a8", "llmc-awq"])
def test_loading_code_of_a_checkpoint_gives_quantscopeslogits(
    scheme: str, made: dict[str, Path], tiny_model_dir: Path
) -> None:
    """``recommend``'s code for a checkpoint is its own from_pretrained (plus the activation
    lines where the scheme quantizes activations), executed as a user would."""
    from quantscope.decide.snippets import code
    from quantscope.results import Result

    config = parse_config(str(made[scheme]))
    loaded = load(tiny_model_dir, config.name)
    meta = {
        "config": config.name,
        "model_folder": str(tiny_model_dir),
        "model_kind": "local-dir",
        "library": loaded.library,
        "kept_linears": loaded.kept,
        "settings": {"baseline_dtype": "fp32"},
    }
    snippet = code(Result("k", config.display, "m", "d", "s", {}, meta=meta))
    assert "from_pretrained(CHECKPOINT" in snippet
    assert ("set_forward_quantized" in snippet) == (scheme == "llmc-w8a8")
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "<snippet>", "exec"), namespace)  # the user's side
    with torch.no_grad():
        theirs = namespace["model"].eval()(input_ids=IDS).logits.float()
    assert torch.equal(logits(loaded), theirs)


@pytest.mark.integration
def test_on_the_bundled_model_a_recipe_beats_round_to_nearest_and_its_folder_equals_it(
    tmp_path: Path,
) -> None:
    """The bundled SmolLM2-135M at 1,024 tokens: GPTQ's W4A16 (16×128 calibration tokens)
    below round-to-nearest at the same width and group, and the cached checkpoint given as
    a folder measures the same to the bit."""
    from quantscope import runner
    from quantscope.config import DataSpec, RunSpec, parse_config_list

    recipe = "llmc-w4a16[group=64,samples=16,seqlen=128]"
    spec = RunSpec(
        configs=parse_config_list(f"fp32,{recipe},rtn[group=64]"),
        data=DataSpec(tokens=1024),
        max_new_tokens=4,
        store_path=str(tmp_path / "r.sqlite"),
    )
    kl = {o.config: o.result.metrics["kl_mean"] for o in runner.run(spec).outcomes if o.result}
    # measured: llmc-w4a16 (16×128 calibration tokens) 0.295, rtn 0.518: ratio 0.57
    assert kl[recipe] < 0.8 * kl["rtn[group=64]"], kl
    folder, _ = llmc.make(models.resolve(spec.model), spec.model, parse_config(recipe))
    again = RunSpec(
        configs=parse_config_list(f"fp32,{folder}"),
        data=DataSpec(tokens=1024),
        max_new_tokens=4,
        store_path=str(tmp_path / "r.sqlite"),
    )
    (_, outcome) = runner.run(again).outcomes
    assert outcome.result is not None and outcome.result.metrics["kl_mean"] == kl[recipe]
    assert "decompressed to float" in outcome.result.meta["library"]
