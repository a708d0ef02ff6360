"""The hardware side: overflow caught, never averaged in; dtype support by device capability;
placement (device_map, max_memory, disk offload) of a baseline bigger than its device."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from conftest import build_tiny_model
from quantscope import runner
from quantscope.cli import app
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config_list

cli = CliRunner()


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory):
    """A tiny Llama whose first MLP writes values of about 3e5 into the residual stream.

    Its down projection is scaled by 1e5: the gated activations are about 1.5 (0.2-sd weights
    over 64 inputs), so each output sums 128 of them times weights of sd 2e4 — about 3e5,
    beyond float16's largest finite value (65,504): the fp16 forward pass makes inf, and the
    next RMSNorm (inf / inf) NaN. bfloat16 has
    float32's exponent range (to 3.4e38): it and fp32 stay finite; RMSNorm then scales the
    large stream back down, so the model still predicts."""
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("overflow"))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(1e5)
    model.save_pretrained(folder)
    return folder


def test_fp16_overflow_is_flagged_and_never_averaged(overflowing_model, tiny_text, tmp_path):
    spec = RunSpec(
        model=model_spec(str(overflowing_model)), configs=parse_config_list("bf16,fp16,fp32"),
        data=DataSpec((str(tiny_text),), tokens=300, context=64, stride=32),
        prompts=("Hello",), max_new_tokens=2, speed_reps=1, ref_topk=16,
        store_path=str(tmp_path / "r.sqlite"),
    )  # fmt: skip
    report = runner.run(spec)
    by = {o.config: o.result for o in report.outcomes}
    fp16, bf16, fp32 = by["fp16"], by["bf16"], by["fp32"]
    assert fp16 is not None and bf16 is not None and fp32 is not None
    # fp16: every scored token's logits are NaN (the overflow is in layer 0, at every position)
    assert fp16.metrics["nonfinite_share"] == 1.0 and fp16.metrics["nonfinite_first_window"] == 0
    assert "ppl" not in fp16.metrics and "kl_mean" not in fp16.metrics  # invalid, not averaged
    assert "NaN or inf on 100.0% of scored tokens (first in window 0)" in fp16.invalid
    for fine in (bf16, fp32):
        assert not fine.invalid and math.isfinite(fine.metrics["kl_mean"])
    assert fp32.metrics["kl_mean"] == 0.0
    out = cli.invoke(app, ["show", report.run_id, "--store", str(tmp_path / "r.sqlite")])
    assert "invalid fp16: logits held NaN or inf" in " ".join(out.output.split())
