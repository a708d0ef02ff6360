"""Quantized checkpoints as configs (llm-compressor's own are in test_llmc): a GPTQ checkpoint
saved by gptqmodel and given as a folder equals quantscope's ``gptq``; a checkpoint of another
model is refused before anything loads; a folder with no quantization_config is measured as a
float model, with a note.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from conformance import load, logits
from conftest import build_tiny_model
from quantscope import backends, models
from quantscope.backends import gptq
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config
from quantscope.errors import UserError

SMALL = "samples=16,seqlen=64"  # 1,024 calibration tokens: a few seconds per recipe here


def test_a_folder_path_is_a_checkpoint_config(tiny_model_dir: Path) -> None:
    config = parse_config(str(tiny_model_dir))
    assert config.method == "checkpoint" and config.path == str(tiny_model_dir.resolve())
    assert config.display == tiny_model_dir.name and parse_config(config.name) == config
    hub = parse_config("checkpoint[path=org/Model-AWQ,revision=v2]")
    assert hub.display == "Model-AWQ@v2" and not hub.local
    reason = backends.get(parse_config("checkpoint")).available(parse_config("checkpoint"), "cpu")
    assert reason is not None and "path=" in reason


def test_a_folder_without_quantization_config_is_measured_as_float(tiny_model_dir: Path) -> None:
    loaded = load(tiny_model_dir, str(tiny_model_dir))
    assert "no quantization_config: measured as a float checkpoint" in loaded.library
    assert torch.equal(logits(loaded), logits(load(tiny_model_dir, "fp32")))


def _run(model_dir: Path, configs: list[str], tiny_text: Path, tmp_path: Path) -> Any:
    from quantscope import runner

    spec = RunSpec(
        model=model_spec(str(model_dir)),
        configs=tuple(parse_config(c) for c in configs),
        data=DataSpec((str(tiny_text),), tokens=300, context=64, stride=32),
        store_path=str(tmp_path / "r.sqlite"),
    )
    return runner.run(spec)


def test_a_checkpoint_of_another_model_is_refused_before_anything_loads(
    tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    deeper = build_tiny_model(tmp_path / "deeper", layers=3)
    with pytest.raises(UserError) as err:
        _run(tiny_model_dir, ["fp32", str(deeper)], tiny_text, tmp_path)
    said = str(err.value)
    assert (
        f"is not a checkpoint of {tiny_model_dir.name}" in said and "num_hidden_layers is 3" in said
    )
    assert said.count(".") <= 2 and "\n" not in said  # one sentence
    from quantscope.cache import cache_dir

    assert not (cache_dir() / "reference").exists()  # no pass began
    # same shapes, another tokenizer: two tokens swap their ids
    other = tmp_path / "other-vocab"
    shutil.copytree(tiny_model_dir, other)
    body = json.loads((other / "tokenizer.json").read_text())
    vocab = body["model"]["vocab"]
    a, b = "a", "b"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(body))
    with pytest.raises(UserError, match="tokenizer's vocabulary differs"):
        _run(tiny_model_dir, [str(other)], tiny_text, tmp_path)


def test_a_hub_checkpoint_offline_says_so_in_one_sentence(tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="Cannot reach the Hugging Face hub"):
        load(tiny_model_dir, "checkpoint[path=nobody/not-a-model-here,revision=main]")


def test_gptq_checkpoint_saved_by_gptqmodel_equals_quantscopes_gptq(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's own gptqmodel run (same calibration rows and settings), saved and given as a
    folder, loads through transformers' from_pretrained and computes what quantscope's
    ``gptq`` does (which loads its folder with GPTQModel.load)."""
    if importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("gptqmodel is not installed (pip install 'quantscope[gptq]')")
    gptqmodel = gptq._import()  # with the loader workers quantscope gives it
    monkeypatch.chdir(tmp_path)  # gptqmodel writes its logs under ./logs
    pytest.importorskip("optimum.gptq", reason="pip install 'quantscope[checkpoints]'")
    config = f"gptq[bits=4,group=32,{SMALL}]"
    ms = model_spec(str(tiny_model_dir))
    files = models.resolve(ms)
    rows, _ = gptq.calibration(files, ms, parse_config(config))
    quant = gptqmodel.QuantizeConfig(bits=4, group_size=32, sym=True, act_group_aware=True)
    theirs = gptqmodel.GPTQModel.load(str(tiny_model_dir), quant, device="cpu", dtype=torch.float32)
    theirs.quantize(rows, batch_size=4)
    theirs.save(str(tmp_path / "their-gptq"))
    mine = load(tiny_model_dir, config)
    folder = load(tiny_model_dir, str(tmp_path / "their-gptq"))
    assert "gptq checkpoint" in folder.library
    # transformers picks gptqmodel's TorchAtenLinear for the folder, quantscope's own load
    # TorchFusedLinear: measured equal to the bit here
    assert torch.equal(logits(folder), logits(mine))
