"""Mixed precision on tiny models: the emulation against bitsandbytes itself, the calibration KL
against a direct computation, byte arithmetic, and a search that finds planted sensitive layers."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tiny_model
from quantscope import backends, data, models, runner
from quantscope.config import (
    BnbInt8,
    Budget,
    DataSpec,
    DType,
    RunSpec,
    model_spec,
    parse_config,
    parse_config_list,
)
from quantscope.errors import UserError
from quantscope.evaluate import scored_logits
from quantscope.evaluate.calibration import calibrate, divergence
from quantscope.metrics.divergence import kl_full
from quantscope.mixed import SearchSpec, SensitivitySpec, bench, search, sensitivity

CALIB = DataSpec(tokens=512, context=64, stride=48)
PLANTED = (1, 3)


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny model whose blocks 1 and 3 carry one large weight per 64-weight block:
    4-bit absmax scaling then rounds the rest of those blocks coarsely, so quantizing these two
    layers costs far more than quantizing the others, whose weights are scaled down to a tenth
    (a random model's first layer is otherwise the most sensitive: measured, 0.72 vs 0.61)."""
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("planted"), seed=1, layers=4)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or "layers." not in name:
                continue
            if any(f"layers.{i}." in name for i in PLANTED):
                module.weight.view(-1)[::64] = 3.0  # 15 standard deviations (N(0, 0.2))
            else:
                module.weight.mul_(0.1)
    model.save_pretrained(folder)
    return folder


def _study(folder: Path, tmp_path: Path, config: str = "bnb-nf4", **kw) -> SensitivitySpec:
    return SensitivitySpec(
        model_spec(str(folder)),
        parse_config(config),
        calib=CALIB,
        store_path=str(tmp_path / "r.sqlite"),
        **kw,
    )


def _windows(folder: Path, spec: DataSpec) -> data.Windows:
    ms = model_spec(str(folder))
    tok = models.load_tokenizer(models.resolve(ms), ms)
    return data.build_windows(data.training_sources(spec), data.encoder(tok), spec)


def _load(folder: Path, config: str) -> torch.nn.Module:
    ms, qc = model_spec(str(folder)), parse_config(config)
    return backends.get(qc).load(models.resolve(ms), ms, qc, "cpu").model


def test_emulated_4bit_weights_are_bitsandbytes_own(tiny_model_dir):
    """The emulated weights equal bitsandbytes' de-quantization of the layer it loaded (before
    any forward pass repacks it), for nf4 and fp4, with and without double quantization."""
    import bitsandbytes.functional as bf

    base = _load(tiny_model_dir, "fp32")
    name = "model.layers.0.mlp.down_proj"
    w = dict(base.named_modules())[name].weight.data
    for text in ("bnb-nf4", "bnb-fp4", "bnb-nf4[double_quant=true]"):
        config = parse_config(text)
        real = dict(_load(tiny_model_dir, text).named_modules())[name].weight
        expected = bf.dequantize_4bit(real.data, real.quant_state).float()
        emulated = backends.get(config).emulate(config).weight(w)
        assert torch.equal(emulated, expected), text
        assert not torch.equal(emulated, w)


def test_calibration_kl_equals_direct_full_vocabulary_kl(tiny_model_dir):
    """divergence() (one dot product per row, no log-probs written) against kl_full in float64
    on the two models' logits, and the perplexity change against the losses directly."""
    windows = _windows(tiny_model_dir, CALIB)
    base, other = _load(tiny_model_dir, "fp32"), _load(tiny_model_dir, "bnb-nf4")
    found = divergence(other, calibrate(base, windows, batch_size=3))
    kls, nll_b, nll_q = [], [], []
    batches = zip(scored_logits(base, windows, 3), scored_logits(other, windows, 3), strict=True)
    for b_batch, q_batch in batches:
        for (xb, t), (xq, _) in zip(b_batch, q_batch, strict=True):
            lb, lq = xb[:].double().log_softmax(-1), xq[:].double().log_softmax(-1)
            kls.append(kl_full(lb, lq))
            nll_b.append(-lb.gather(-1, t[:, None]).squeeze(-1))
            nll_q.append(-lq.gather(-1, t[:, None]).squeeze(-1))
    direct = float(torch.cat(kls).mean())
    assert found["kl"] == pytest.approx(direct, rel=1e-5)
    ratio = float((torch.cat(nll_q) - torch.cat(nll_b)).mean())
    assert found["dppl_pct"] == pytest.approx(100 * np.expm1(ratio), rel=1e-5)
    assert found["kl_se"] > 0 and direct > 1e-3


def test_emulated_kl_tracks_the_real_bitsandbytes_model(tiny_model_dir, tmp_path):
    """With every unit quantized, the emulated model's calibration KL is within 10% of the real
    bitsandbytes model's (measured: 0.289 vs 0.291, 0.6%; the CPU kernel multiplies at bf16
    precision)."""
    spec = _study(tiny_model_dir, tmp_path, modes=("only",))
    prepared = bench(spec, runner.LogEvents())
    emulated = prepared.measure(prepared.units)["kl"]
    real = divergence(_load(tiny_model_dir, "bnb-nf4"), prepared.calibration)["kl"]
    assert emulated == pytest.approx(real, rel=0.10)


def test_estimated_bytes_equal_the_loaded_mixed_model(tiny_model_dir, tmp_path):
    """int8 keeps its stored format on CPU, so the estimate is exact to the byte: blocks kept in
    bf16, the rest int8 with a float32 scale per row, embeddings and norms in bf16."""
    spec = _study(tiny_model_dir, tmp_path, "bnb-int8", fallback=DType.BF16, modes=("only",))
    prepared = bench(spec, runner.LogEvents())
    kept = {prepared.units[0].name}
    config = BnbInt8(dtype=DType.BF16, skip=tuple(kept))
    ms = model_spec(str(tiny_model_dir))
    loaded = backends.get(config).load(models.resolve(ms), ms, config, "cpu")
    from quantscope.evaluate import weight_footprint

    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor([[1, 2, 3]]))
    measured = weight_footprint(loaded)["weight_bytes"]
    assert prepared.estimate_mb(kept) * 2**20 == measured
    assert prepared.estimate_mb(set()) < prepared.estimate_mb(kept)


def test_sensitivity_ranks_the_planted_layers_first_and_is_stored(planted_dir, tmp_path):
    spec = _study(planted_dir, tmp_path)
    study = sensitivity(spec)
    ranked = study.ranking()
    assert {r["layer"] for r in ranked[:2]} == set(PLANTED)
    assert len(ranked) == 4 and all(r["kind"] == "block" for r in ranked)
    # the converse agrees: keeping a planted block saves more KL than keeping any other
    gains = {r["layer"]: r["gain"] for r in ranked}
    assert min(gains[i] for i in PLANTED) > max(v for k, v in gains.items() if k not in PLANTED)
    # every measurement was stored as it finished; a rerun measures nothing again
    from quantscope.store import Store

    store = Store(tmp_path / "r.sqlite")
    assert len(store.sensitivity_rows(study.key)) == 2 + 2 * 4
    store.close()
    again = sensitivity(spec)
    assert again.rows == study.rows


def test_linear_units_and_heatmap_matrix(planted_dir, tmp_path):
    study = sensitivity(_study(planted_dir, tmp_path, by="linear", modes=("only",)))
    assert len(study.units) == 4 * 7
    layers, kinds, values = study.matrix("only")
    assert layers == [0, 1, 2, 3] and "down_proj" in kinds and len(kinds) == 7
    per_layer = [np.nansum(row) for row in values]
    assert min(per_layer[i] for i in PLANTED) > max(
        per_layer[i] for i in range(4) if i not in PLANTED
    )


def test_search_keeps_the_planted_layers_verifies_and_saves(planted_dir, tiny_text, tmp_path):
    """A budget of 5% of pure nf4's KL is met by keeping the two planted blocks in bf16 (measured
    on calibration: block 1 alone leaves 9%, blocks 1 and 3 leave 2%)."""
    study = _study(planted_dir, tmp_path, fallback=DType.BF16)
    full = sensitivity(study).all_quantized["kl"]
    spec = SearchSpec(
        study,
        Budget(max_kl=0.05 * full),
        DataSpec((str(tiny_text),), tokens=400, context=64, stride=32),
        save=str(tmp_path / "mix.json"),
    )
    result = search(spec)
    assert result.chosen is not None, result.message
    kept = set(parse_config(result.chosen["config"]).skip)
    assert kept == {f"model.layers.{i}" for i in PLANTED}
    assert result.chosen["kl"] <= 0.05 * full  # verified on the evaluation text
    others = result.chosen["others"]
    assert result.chosen["weight_mb"] < others["bf16"]["weight_mb"]
    assert result.chosen["kl"] < others["bnb-nf4"]["kl_mean"]
    front = [(p["estimated_mb"], p["kl"]) for p in result.front]
    assert front == sorted(front) and all(a[1] > b[1] for a, b in pairwise(front))
    # the saved file is a config `run --configs` accepts, under its label
    (config,) = parse_config_list(str(tmp_path / "mix.json"))
    assert config.display == result.chosen["label"] and config.dtype is DType.BF16
    assert json.loads((tmp_path / "mix.json").read_text())["verified"]["kl"] == result.chosen["kl"]
    report = runner.run(
        RunSpec(
            model=study.model, configs=(config,), data=spec.evaluation, store_path=study.store_path
        )
    )
    assert report.outcomes[0].status == "reused" and report.outcomes[0].config == config.display


def test_search_chooses_among_kv_caches_by_weights_plus_cache(planted_dir, tiny_text, tmp_path):
    """With ``--kv`` choices every candidate is measured through its cache and sized as weights
    + cache at the evaluation context; the one verified is the smallest such total meeting the
    budget on calibration (whichever cache that is), saved with its ``+kv=``, and its cache
    bytes are the verification run's own measurement."""
    from quantscope.config.kv import parse_kv

    study = _study(planted_dir, tmp_path, fallback=DType.BF16, modes=("only",))
    full = sensitivity(study).all_quantized["kl"]
    caches = (parse_kv("dynamic[chunk=16]"), parse_kv("quanto-int4[chunk=16,group=32,residual=16]"))
    evaluation = DataSpec((str(tiny_text),), tokens=400, context=128, stride=64)
    spec = SearchSpec(
        study, Budget(max_kl=0.3 * full), evaluation, kv=caches, save=str(tmp_path / "kv.json")
    )
    result = search(spec)
    assert result.chosen is not None, result.message
    by_cache = {kv.name: [c for c in result.candidates if c["kv"] == kv.name] for kv in caches}
    assert all(by_cache.values())  # both caches measured
    # the int4 cache holds under a third of the unquantized (bf16) one at 128 tokens
    sizes = {name: rows[0]["cache_mb"] for name, rows in by_cache.items()}
    assert 0 < sizes[caches[1].name] < sizes[caches[0].name] / 3
    meeting = [
        min((c for c in rows if c["kl"] <= 0.3 * full), key=lambda c: c["total_mb"], default=None)
        for rows in by_cache.values()
    ]
    best = min((c for c in meeting if c is not None), key=lambda c: c["total_mb"])
    config = parse_config(result.chosen["config"])
    assert config.kv is not None and config.kv.name == best["kv"] == result.chosen["kv"]
    assert result.chosen["cache_mb"] > 0
    assert result.chosen["total_mb"] == result.chosen["weight_mb"] + result.chosen["cache_mb"]
    (saved,) = parse_config_list(str(tmp_path / "kv.json"))
    assert saved.kv == config.kv


def test_impossible_budget_says_so_and_shows_the_closest(planted_dir, tiny_text, tmp_path):
    study = _study(planted_dir, tmp_path, fallback=DType.BF16, modes=("only",))
    spec = SearchSpec(
        study, Budget(max_kl=1e-12), DataSpec((str(tiny_text),), tokens=400, context=64, stride=32)
    )
    result = search(spec)
    assert result.chosen is None and result.saved is None and result.verified == []
    assert "misses the budget" in result.message
    # the closest point keeps all 4 blocks in bf16 (only weight rounding left)
    assert result.closest is not None and result.closest["kept"] == 4


def test_bad_inputs_explain_themselves(tmp_path):
    with pytest.raises(UserError, match="accuracy budget"):
        SearchSpec(SensitivitySpec(model_spec(None), parse_config("bnb-nf4")), Budget(max_mb=100))
    with pytest.raises(UserError, match="positive"):
        Budget(max_kl=-1)
    with pytest.raises(UserError, match=r"llama\.cpp cache"):
        from quantscope.config.kv import parse_kv

        SearchSpec(
            SensitivitySpec(model_spec(None), parse_config("bnb-nf4")),
            Budget(max_kl=0.1),
            kv=(parse_kv("q8_0"),),
        )
    with pytest.raises(UserError, match="quantizes nothing"):
        SensitivitySpec(model_spec(None), parse_config("bf16"))
    with pytest.raises(UserError, match="block or linear"):
        SensitivitySpec(model_spec(None), parse_config("bnb-nf4"), by="layer")
    with pytest.raises(UserError, match="No such config file"):
        parse_config_list(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a quantscope config file"):
        parse_config_list(str(bad))
