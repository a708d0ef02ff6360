"""KV-cache configs (``CONFIG+kv=SPEC``) and long windows: the grammar, scoring through the
cache in chunks, the bytes a cache holds at depth, and logits made a slice of rows at a time.
Tiny random models; the GGUF cache types are in test_gguf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quantscope import backends, evaluate
from quantscope.cli import app
from quantscope.config import model_spec, parse_config
from quantscope.config.kv import parse_kv
from quantscope.data import make_windows
from quantscope.errors import UserError
from quantscope.evaluate.depth import predicted_bytes
from quantscope.models import resolve
from quantscope.runner import result_key


@pytest.fixture(scope="module")
def files(tiny_model_dir):
    return resolve(model_spec(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def model(files):
    config = parse_config("fp32")
    return backends.get(config).load(files, model_spec(str(files.folder)), config, "cpu").model


@pytest.fixture(scope="module")
def windows():
    ids = np.random.default_rng(1).integers(0, 320, 700).tolist()
    return make_windows(ids, 256, 128)


@pytest.fixture(scope="module")
def reference(model, windows):
    return evaluate.reference_pass(model, windows, topk=32, batch_size=3)


def _kl(model, windows, reference, kv: str | None) -> np.ndarray:
    spec = parse_kv(kv) if kv else None
    ts = evaluate.compare_pass(model, windows, reference, 3, baseline=model, kv=spec)
    assert ts.kl_exact is not None
    return ts.kl_exact


@pytest.mark.parametrize("chunk", [1, 7, 128, 300])
def test_chunked_scoring_through_an_unquantized_cache_equals_the_full_window_pass(
    model, windows, reference, chunk
):
    # the bound; measured: 0 at chunk 128 (one chunk per scored half), ~1e-8 mean and
    # 7e-7 max at chunk 7 (float32 rounding of attention split in pieces)
    kl = _kl(model, windows, reference, f"dynamic[chunk={chunk}]")
    assert kl.max() < 1e-5


def test_quantized_caches_raise_kl_in_order_of_bits(model, windows, reference):
    """Each scored token attends to quantized history: int2 visibly raises the KL, and fewer
    bits cost more. Measured on this model: hqq-int8 2e-4, quanto-int4 0.07, quanto-int2
    0.95 nats (mean); the factors asserted leave 5x or more of margin."""
    exact = _kl(model, windows, reference, "dynamic").mean()
    int8 = _kl(model, windows, reference, "hqq-int8").mean()
    int4 = _kl(model, windows, reference, "quanto-int4").mean()
    int2 = _kl(model, windows, reference, "quanto-int2").mean()
    assert exact < 1e-6 < int8
    assert int8 * 20 < int4 and int4 * 4 < int2 and int2 > 0.1


def test_a_cache_only_matters_when_text_goes_through_it_in_chunks(model, windows, reference):
    """One chunk as long as the window is a prefill: transformers hands it back unquantized,
    so the quantized cache changes nothing — why the chunk size is part of the config."""
    whole = _kl(model, windows, reference, "quanto-int2[chunk=256]")
    assert whole.max() < 1e-5
    assert _kl(model, windows, reference, "quanto-int2[chunk=64]").mean() > 0.1


def test_logits_are_made_a_slice_of_rows_at_a_time(model, windows, reference, monkeypatch):
    """Past ``SLICE_ABOVE`` bytes of a batch's logits (set to 0 here) the output head never
    sees a whole window: at most ``_ROWS`` rows per call (so 8k windows hold no (8k, vocab)
    logits), and the sliced logits equal the model's own."""
    from quantscope.evaluate import scoring
    from quantscope.evaluate.accuracy import _ROWS

    monkeypatch.setattr(scoring, "SLICE_ABOVE", 0)
    rows: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[-2]))
    try:
        evaluate.compare_pass(model, windows, reference, 3)
    finally:
        hook.remove()
    assert rows and max(rows) <= _ROWS
    batch = next(evaluate.scored_logits(model, windows, 3))
    with torch.no_grad():
        full = model(input_ids=torch.from_numpy(windows.ids[:3])).logits
    for b, (logits, _) in enumerate(batch):
        assert logits.head is not None  # sliced, not the model's own logits
        start = int(windows.score_from[b])
        torch.testing.assert_close(logits[:], full[b, start - 1 : -1], rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(scoring, "SLICE_ABOVE", 2**40)  # short windows: the model's own
    assert all(x.head is None for x, _ in next(evaluate.scored_logits(model, windows, 3)))


@pytest.mark.parametrize(
    "text",
    [
        "fp32+kv=dynamic",
        "bf16+kv=quanto-int4",
        "bnb-nf4+kv=hqq-int2[residual=64]",
        "hqq[bits=4,group=64]+kv=hqq-int8[axis=1,chunk=32,group=32]",
        "gguf[qtype=Q4_K_M]+kv=q8_0",
        "gguf+kv=q4_0[v=f16]",
    ],
)
def test_kv_config_names_round_trip_and_key_results(text):
    config = parse_config(text)
    assert parse_config(config.name) == config
    assert "+kv=" in config.name
    plain = parse_config(text.split("+kv=")[0])
    keys = {result_key("m", c, "d", "s") for c in (config, plain)}
    assert len(keys) == 2  # the cache is part of what a result is stored under


def test_kv_chunk_and_residual_key_results_apart():
    names = [
        "fp32+kv=quanto-int4",
        "fp32+kv=quanto-int4[chunk=64]",
        "fp32+kv=quanto-int4[residual=32]",
        "fp32+kv=hqq-int4",
    ]
    assert len({result_key("m", parse_config(n), "d", "s") for n in names}) == len(names)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("gguf+kv=quanto-int4", "cannot score through kv=quanto-int4"),
        ("bf16+kv=q8_0", "cannot score through kv=q8_0"),
        ("bf16+kv=quanto-int8", "Did you mean 'quanto-int4'"),
        ("bf16+kv=dynamic[residual=64]", "takes no parameter 'residual'"),
        ("gguf+kv=q8_0[chunk=64]", "takes no parameter 'chunk'"),
        ("bf16+kv=hqq-int4[axis=-1]", "axis must be 0 or 1"),
    ],
)
def test_a_kv_config_an_engine_cannot_take_is_refused_in_one_sentence(text, says):
    with pytest.raises(UserError) as err:
        parse_config(text)
    message = str(err.value)
    assert says in message and message.count(". ") <= 2 and "\n" not in message


def test_the_cli_refuses_a_wrong_kv_config_before_loading_anything(monkeypatch, tmp_path):
    from quantscope import models

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was looked up before the config was refused")

    monkeypatch.setattr(models, "resolve", no_loading)
    result = CliRunner().invoke(
        app, ["run", "--configs", "gguf+kv=hqq-int4", "--store", str(tmp_path / "r.sqlite")]
    )
    assert result.exit_code == 2, result.output  # a UserError: one red sentence
    assert "cannot score through kv=hqq-int4" in " ".join(result.output.split())
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kv", ["dynamic", "quanto-int4", "quanto-int2", "hqq-int4", "hqq-int8"])
def test_cache_bytes_at_depth_are_measured_and_match_the_formula(model, kv):
    """The bytes held after d tokens, read from the cache's tensors, against the formula
    (values × bits/8 plus a scale and zero per group); measured equal on this model and on
    the bundled one, so 1% is margin for a library adding a small buffer."""
    spec = parse_kv(kv)
    found = evaluate.depth_metrics(model, spec, (0, 64, 200), vocab=320, prefill=16, steps=2)
    assert found["kv_bytes@0"] == 0
    for d in (64, 200):
        assert found[f"kv_bytes@{d}"] == pytest.approx(found[f"kv_bytes_pred@{d}"], rel=0.01)
        assert found[f"decode_tps@{d}"] > 0 and found[f"prefill_tps@{d}"] > 0
    assert found["kv_bytes@200"] > found["kv_bytes@64"]


def test_int4_cache_holds_under_a_third_of_a_16_bit_cache():
    """The formula for the bundled model's shape (30 layers, 3 KV heads of 64) in bf16: 4 bits
    plus a bf16 scale and zero per 64 values is 0.5625 bytes per value, 28% of bf16's 2."""
    from types import SimpleNamespace

    shape = SimpleNamespace(
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        hidden_size=576,
        head_dim=64,
    )
    full = predicted_bytes(shape, parse_kv("dynamic"), 8192, 2)
    int4 = predicted_bytes(shape, parse_kv("quanto-int4"), 8192, 2)
    assert full == 2 * 30 * 3 * 64 * 2 * 8192
    assert int4 / full == pytest.approx(0.28125) and int4 / full <= 0.30


def test_depths_read_from_the_command_line():
    from quantscope.specs import parse_depths

    assert parse_depths("0,1k,4096") == (0, 1024, 4096)
    assert parse_depths(None) is None
    with pytest.raises(UserError, match="token counts"):
        parse_depths("0,deep")
