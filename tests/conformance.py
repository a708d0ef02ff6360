"""The conformance suite every backend's test subclasses: set ``config`` (a config string),
``max_kl`` (the KL to the baseline its bit width allows on the tiny model, from measurement
with margin) and ``bits`` (the range its bits per quantized weight must fall in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from quantscope import backends, data, evaluate, models, runner
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config
from quantscope.evaluate.calibration import calibrate, divergence

WINDOWS = DataSpec(tokens=512, context=64, stride=48)


def kl_of(folder: Path, config: str) -> float:
    """Calibration KL of ``config`` to the fp32 baseline on :data:`WINDOWS` of the tiny model."""
    ms = model_spec(str(folder))
    files = models.resolve(ms)
    tokenizer = models.load_tokenizer(files, ms)
    windows = data.build_windows(data.read_sources(WINDOWS), data.encoder(tokenizer), WINDOWS)

    def load(text: str) -> Any:
        qc = parse_config(text)
        return backends.get(qc).load(files, ms, qc, "cpu").model

    return divergence(load(config), calibrate(load("fp32"), windows, 4))["kl"]


IDS = torch.tensor([[5, 17, 42, 7, 99, 3, 64, 12, 250, 31]])  # ids the tiny vocabulary has


def load(folder: Path, config: str) -> Any:
    """``config`` loaded on the CPU against the model in ``folder``."""
    ms = model_spec(str(folder))
    qc = parse_config(config)
    return backends.get(qc).load(models.resolve(ms), ms, qc, "cpu")


def logits(loaded: Any) -> torch.Tensor:
    """A loaded model's float32 logits on :data:`IDS`."""
    with torch.no_grad():
        return loaded.model(input_ids=IDS).logits.float()


class BackendConformance:
    config: ClassVar[str]
    max_kl: ClassVar[float]
    bits: ClassVar[tuple[float, float]]
    linears: ClassVar[int] = 14  # 7 in each of 2 layers; lm_head is kept
    vocab: ClassVar[int] = 320

    @pytest.fixture(scope="class")
    @classmethod
    def model_dir(cls, tiny_model_dir: Path) -> Path:
        """The model quantized: the tiny one, unless a backend needs another kind."""
        return tiny_model_dir

    @pytest.fixture(scope="class")
    @classmethod
    def loaded(cls, model_dir: Path) -> Any:
        qc = parse_config(cls.config)
        backend = backends.get(qc)
        reason = backend.available(qc, "cpu")
        if reason:
            pytest.skip(f"{cls.config} cannot run here: {reason}")
        ms = model_spec(str(model_dir))
        return backend.load(models.resolve(ms), ms, qc, "cpu")

    @pytest.fixture(scope="class")
    @classmethod
    def windows(cls, model_dir: Path) -> data.Windows:
        ms = model_spec(str(model_dir))
        tokenizer = models.load_tokenizer(models.resolve(ms), ms)
        return data.build_windows(data.read_sources(WINDOWS), data.encoder(tokenizer), WINDOWS)

    def test_logits_are_finite_and_shaped(self, loaded: Any) -> None:
        ids = torch.tensor([list(range(2, 34))])
        with torch.no_grad():
            logits = loaded.model(input_ids=ids).logits
        assert logits.shape == (1, 32, self.vocab)
        assert torch.isfinite(logits.float()).all()

    def test_kl_to_the_baseline_fits_the_bit_width(
        self, loaded: Any, windows: data.Windows, model_dir: Path
    ) -> None:
        ms = model_spec(str(model_dir))
        base = backends.get(parse_config("fp32")).load(
            models.resolve(ms), ms, parse_config("fp32"), "cpu"
        )
        kl = divergence(loaded.model, calibrate(base.model, windows, 4))["kl"]
        assert 0 < kl <= self.max_kl, kl

    def test_bytes_fit_the_bit_width(self, loaded: Any) -> None:
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor([[1, 2, 3]]))  # some kernels repack at first use
        footprint = evaluate.weight_footprint(loaded)
        low, high = self.bits
        assert low <= footprint["linear_bits_per_weight"] <= high
        assert footprint["quantized_linears"] == self.linears

    def test_generation_works(self, loaded: Any, model_dir: Path) -> None:
        ms = model_spec(str(model_dir))
        tokenizer = models.load_tokenizer(models.resolve(ms), ms)
        (gen,) = evaluate.generate(loaded.model, tokenizer, ("Hello there",), 5)
        assert 1 <= len(gen["ids"]) <= 5 and all(0 <= i < self.vocab for i in gen["ids"])

    def test_unavailable_is_a_clean_skip_with_its_reason(
        self, model_dir: Path, tiny_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        qc = parse_config(self.config)
        backend = backends.get(qc)
        monkeypatch.setattr(
            backend, "available", lambda method, device: "no such accelerator here."
        )
        spec = RunSpec(
            model=model_spec(str(model_dir)),
            configs=(qc,),
            data=DataSpec((str(tiny_text),), tokens=200, context=64, stride=32),
            store_path=str(tmp_path / "r.sqlite"),
        )
        (outcome,) = runner.run(spec).outcomes
        assert (outcome.status, outcome.reason) == ("skipped", "no such accelerator here.")
