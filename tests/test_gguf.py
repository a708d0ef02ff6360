"""llama.cpp GGUF on the bundled model (its own Q4_1 file), through llama.cpp itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance import BackendConformance
from conftest import build_tiny_smollm
from quantscope import backends, runner
from quantscope.config import DataSpec, Gguf, RunSpec, parse_config, parse_config_list
from quantscope.models import bundled_gguf

pytestmark = pytest.mark.integration
reason = backends.get(Gguf()).available(Gguf(), "cpu")
if reason:
    pytest.skip(f"llama.cpp GGUF cannot run here: {reason}", allow_module_level=True)


class TestGgufQ8(BackendConformance):
    """The conformance suite on a tiny random Llama (SmolLM2's tokenizer, which llama.cpp's
    converter knows), converted to F32 by llama.cpp, quantized to Q8_0, run by llama.cpp."""

    config = "gguf[qtype=Q8_0]"
    max_kl = 0.01  # measured 0.0029 (F32: 6e-6, Q4_0: 0.42)
    bits = (8.5, 8.5)  # Q8_0: 32 int8 values and one fp16 scale per block
    vocab = 49152

    @pytest.fixture(scope="class")
    @classmethod
    def model_dir(cls, tmp_path_factory, llama_cpp_converter):
        from quantscope.backends import gguf_files

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(gguf_files.CONVERTER_ENV, str(llama_cpp_converter))
            yield build_tiny_smollm(tmp_path_factory.mktemp("tiny-smollm"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(autouse=True)
def _shared_cache(cache, monkeypatch):
    monkeypatch.setenv("QUANTSCOPE_CACHE", str(cache))  # convert and quantize once


@pytest.fixture(scope="module")
def report(cache):
    """The bundled model's own Q4_1 file and two re-quantizations, evaluated by llama.cpp
    against the float32 baseline (the Q4_1 file de-quantized by transformers)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTSCOPE_CACHE", str(cache))
        configs = f"gguf[file={bundled_gguf()}],gguf[qtype=Q8_0],gguf[qtype=Q4_K_M]"
        spec = RunSpec(
            configs=parse_config_list(configs),
            data=DataSpec(tokens=1024, context=256, stride=128),
            prompts=("Explain the accuracy tradeoff in quantization.",),
            max_new_tokens=8,
            speed_reps=1,
            store_path=str(cache / "r.sqlite"),
        )
        return runner.run(spec)


def test_llama_cpp_on_the_source_file_reproduces_the_baseline(report):
    """llama.cpp running the Q4_1 file and transformers running its de-quantization compute
    the same model two ways. Measured: KL 0.0038, top-1 95.6%, Δppl +0.49 ± 0.32% — llama.cpp
    multiplies Q4_1 weights by activations it quantizes to 8 bits, the float32 baseline does
    not. An off-by-one in the adapter's positions or a BOS slip would give a KL near 1."""
    source = report.outcomes[0]
    assert source.status == "measured", source.reason
    m = source.result.metrics
    assert m["kl_mean"] < 0.008 and m["top1_agree"] > 0.93
    assert abs(m["dppl_pct"]) < 1.5


def test_perplexity_equals_llama_cpp_scored_directly(report):
    """quantscope's perplexity of the Q8_0 file against one computed here straight from
    llama.cpp's logits on the same windows (float64 log-softmax in numpy): within 0.5%."""
    import numpy as np
    from llama_cpp import Llama

    from quantscope import data, models
    from quantscope.config import model_spec

    result = report.outcomes[1].result
    spec = DataSpec(tokens=1024, context=256, stride=128)
    ms = model_spec(None)
    tokenizer = models.load_tokenizer(models.resolve(ms), ms)
    windows = data.build_windows(data.read_sources(spec), data.encoder(tokenizer), spec)
    path = next((Path(models.cache_dir()) / "gguf").glob("*Q8_0.gguf"))
    llm = Llama(model_path=str(path), logits_all=True, n_ctx=256, n_batch=256, verbose=False)
    nll = []
    for ids, start in zip(windows.ids.tolist(), windows.score_from.tolist(), strict=True):
        llm.reset()
        llm.eval(ids)
        x = np.asarray(llm.scores[: len(ids)], dtype=np.float64)  # (T, V)
        lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
        rows = np.arange(start - 1, len(ids) - 1)
        nll.extend(lse[rows] - x[rows, np.asarray(ids)[rows + 1]])
    assert len(nll) == result.metrics["tokens"]
    assert result.metrics["ppl"] == pytest.approx(float(np.exp(np.mean(nll))), rel=5e-3)


def test_requantized_files_follow_bit_width_and_report_their_type_mix(report):
    q8, q4 = (o.result for o in report.outcomes[1:])
    assert q8 is not None and q4 is not None
    assert q8.metrics["kl_mean"] < q4.metrics["kl_mean"]
    assert q8.metrics["weight_mb"] > q4.metrics["weight_mb"]
    assert 8.0 < q8.metrics["linear_bits_per_weight"] < 9.0  # Q8_0: 8.5 bits
    # k-quants need rows that are multiples of 256: SmolLM2's 576-wide rows fall back
    mix = q4.meta["library"]
    assert "Q4_K" in mix and any(t in mix for t in ("Q5_0", "Q4_0", "Q5_1", "Q8_0", "IQ4_NL"))
    assert q8.metrics["quantize_s"] > 0 and q8.generations[0]["ids"]


def test_unknown_quantization_type_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTSCOPE_CACHE", str(tmp_path))
    data = DataSpec(tokens=300, context=256, stride=128)
    config = parse_config("gguf[qtype=Q9_X]")
    spec = RunSpec(configs=(config,), data=data, store_path=str(tmp_path / "r.sqlite"))
    (outcome,) = runner.run(spec).outcomes
    assert outcome.status == "failed" and "no quantization type 'Q9_X'" in outcome.reason


def test_a_hugging_face_baseline_converted_by_llama_cpp_reproduces_it(
    llama_cpp_converter, cache, monkeypatch
):
    """The baseline as a Hugging Face folder, converted to F32 by llama.cpp's own converter
    and run by llama.cpp, against transformers running the same folder. Measured: KL 1.1e-6,
    top-1 99.95%, ppl 11.2789 vs 11.2796 (4,096 tokens). A wrong tensor order or a mangled
    tokenizer in the conversion would give a KL of 1 or more."""
    from quantscope import models
    from quantscope.backends import gguf_files
    from quantscope.config import model_spec

    monkeypatch.setenv(gguf_files.CONVERTER_ENV, str(llama_cpp_converter))
    folder = models.resolve(model_spec(None)).folder  # the bundled model, saved as safetensors
    spec = RunSpec(
        model=model_spec(str(folder)),
        configs=parse_config_list("gguf[qtype=F32]"),
        data=DataSpec(tokens=1024, context=256, stride=128),
        prompts=("Hello",),
        max_new_tokens=4,
        speed_reps=1,
        store_path=str(cache / "hf.sqlite"),
    )
    (outcome,) = runner.run(spec).outcomes
    assert outcome.status == "measured", outcome.reason
    m = outcome.result.metrics
    assert m["kl_mean"] < 1e-4 and m["top1_agree"] > 0.995
    assert abs(m["dppl_pct"]) < 0.05
    assert m["linear_bits_per_weight"] == 32.0 and m["quantize_s"] > 0
    path, seconds = gguf_files.converted(models.resolve(spec.model), spec.model)  # cached now
    assert seconds > 0 and path.stat().st_size > 4 * 134e6


def test_converting_a_model_that_ships_code_needs_trust_remote_code(tmp_path, monkeypatch):
    """llama.cpp's converter loads tokenizers with trust_remote_code=True, so quantscope asks
    first; nothing is converted (no converter needed to get this answer)."""
    from quantscope import models
    from quantscope.backends import gguf_files
    from quantscope.config import model_spec
    from quantscope.errors import UserError

    monkeypatch.setenv("QUANTSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(gguf_files.CONVERTER_ENV, str(tmp_path / "nowhere"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenization_custom.py").write_text("raise SystemExit('ran')\n")
    files = models.ModelFiles(folder, "custom", str(folder), models.ModelKind.LOCAL_DIR, "f")
    with pytest.raises(UserError, match="pass --trust-remote-code"):
        gguf_files.converted(files, model_spec(str(folder)))
    with pytest.raises(UserError, match="quantscope gguf-converter"):
        gguf_files.converted(files, model_spec(str(folder), trust_remote_code=True))


def test_batched_scoring_equals_one_window_at_a_time():
    """The scoring path puts B windows in one llama_decode as B sequences with logits only
    for the kept positions; each window's logits must equal those of the window run alone
    with every position's logits (the former path). Measured: max |difference| exactly 0
    (the same kernels on the same rows; with ggml's CPU flash attention, which rounds Q to
    fp16, it was 1.4, hence it is off in both paths); 1e-3 allows a build whose matrix
    kernels tile a batch of sequences differently. Attention leaking across sequences, a
    position off by one or a row read from the wrong sequence would differ by whole logits."""
    import numpy as np
    import torch
    from transformers import AutoConfig

    from quantscope import models
    from quantscope.backends.gguf import LlamaCppModel
    from quantscope.config import model_spec

    folder = models.resolve(model_spec(None)).folder
    model = LlamaCppModel(bundled_gguf(), AutoConfig.from_pretrained(str(folder)), n_ctx=256)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(0, 49152, size=(3, 96)))
    alone = [model._run(row, keep=False).numpy() for row in ids.tolist()]  # (96, V) each
    for rows, keep in ((3, 40), (2, 0), (3, 96)):  # a smaller call reuses the context
        logits = model(input_ids=ids[:rows], use_cache=False, logits_to_keep=keep).logits
        kept = keep or 96
        assert tuple(logits.shape) == (rows, kept, 49152)
        for b in range(rows):
            assert np.abs(logits[b].numpy() - alone[b][-kept:]).max() < 1e-3
    longer = torch.from_numpy(rng.integers(0, 49152, size=(4, 128)))  # the context is remade
    logits = model(input_ids=longer, logits_to_keep=8).logits
    last = model._run(longer[3].tolist(), keep=False).numpy()[-8:]
    assert np.abs(logits[3].numpy() - last).max() < 1e-3


def test_llama_cpp_cache_types_are_in_the_scoring_path_and_hold_their_bytes():
    """``gguf+kv=TYPE`` scores through llama.cpp's cache of that type (flash attention on, which
    a quantized V needs): on real text the KL to the f16-cache pass grows as the cache's bits
    fall, and the bytes of 256 cached tokens are the formula's (K and V rows as stored; llama.cpp's
    own state size adds a header of a few kB, hence 1%)."""
    import numpy as np
    import torch
    from transformers import AutoConfig

    from quantscope import models
    from quantscope.backends.gguf import LlamaCppModel
    from quantscope.config import model_spec
    from quantscope.config.kv import parse_kv
    from quantscope.data import bundled_text
    from quantscope.evaluate.depth import predicted_bytes

    spec = model_spec(None)
    files = models.resolve(spec)
    config = AutoConfig.from_pretrained(str(files.folder))
    ids = models.load_tokenizer(files, spec)(bundled_text("eval")[:6000])["input_ids"][:512]
    window = torch.tensor([ids])

    def log_probs(kv: str | None) -> tuple[np.ndarray, LlamaCppModel]:
        model = LlamaCppModel(bundled_gguf(), config, n_ctx=512, kv=parse_kv(kv) if kv else None)
        x = model(input_ids=window, logits_to_keep=256).logits[0].double()
        return (x - torch.logsumexp(x, -1, keepdim=True)).numpy(), model

    base, _ = log_probs(None)
    kls, bytes_held = {}, {}
    for kv in ("f16", "q8_0", "q4_0"):
        lp, model = log_probs(kv)
        kls[kv] = float((np.exp(base) * (base - lp)).sum(-1).mean())
        held, _, _ = model.at_depth(ids, 256, 8, 2)
        bytes_held[kv] = held / predicted_bytes(config, parse_kv(kv), 256, 2)
    assert kls["f16"] < kls["q8_0"] < kls["q4_0"], kls
    assert all(abs(ratio - 1) < 0.01 for ratio in bytes_held.values()), bytes_held
