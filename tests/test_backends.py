"""Every backend through the shared conformance suite (tests/conformance.py), on the tiny model.

KL bounds: the KL measured on the tiny model (weights N(0, 0.2)) times about 2, so a
regression that doubles the error fails (measured: bf16 0.00061, bnb-int8 0.0027, bnb-nf4
0.278, rtn 8-bit 0.00137, rtn 4-bit asymmetric 0.285; CPU runs are deterministic).
"""

from __future__ import annotations

from conformance import BackendConformance


class TestBf16(BackendConformance):
    config = "bf16"
    max_kl = 1.5e-3
    bits = (16.0, 16.0)
    linears = 15  # a cast covers lm_head too


class TestBnbInt8(BackendConformance):
    config = "bnb-int8"
    max_kl = 0.006
    bits = (8.0, 8.6)


class TestBnbNf4(BackendConformance):
    config = "bnb-nf4"
    max_kl = 0.6
    bits = (4.2, 4.6)


class TestRtn8(BackendConformance):
    config = "rtn[bits=8,group=64]"
    max_kl = 3e-3
    bits = (8.25, 8.25)


class TestRtn4(BackendConformance):
    config = "rtn[bits=4,group=64,sym=false]"
    max_kl = 0.6
    bits = (4.3125, 4.3125)


def test_rtn_kl_follows_bit_width(tiny_model_dir):
    """Fewer bits, more KL: 8 < 4 < 3 < 2 bits (measured 0.0014, 0.36, 1.15, 2.33)."""
    from conformance import kl_of

    kls = [kl_of(tiny_model_dir, f"rtn[bits={b},group=64]") for b in (8, 4, 3, 2)]
    assert kls == sorted(kls) and kls[0] < 0.01 < kls[1]


class TestQuantoInt8(BackendConformance):
    config = "quanto-int8"
    max_kl = 3e-3  # measured 0.00137
    bits = (8.0, 8.5)  # int8 + a float32 scale per output row (64 or 128 inputs here)


class TestQuantoFp8(BackendConformance):
    config = "quanto-fp8"
    max_kl = 0.05  # measured 0.024 (e4m3 keeps 3 mantissa bits)
    bits = (8.0, 8.5)


class TestQuantoInt4(BackendConformance):
    config = "quanto-int4"
    max_kl = 0.6  # measured 0.291
    bits = (4.5, 5.0)  # packed int4 + float32 scale and shift per group


class TestHqq4(BackendConformance):
    config = "hqq[bits=4,group=64]"
    max_kl = 0.6  # measured 0.279
    bits = (5.0, 5.0)  # 4 bits + float32 scale and zero per 64 weights


def test_kl_follows_bit_width_within_quanto_and_hqq(tiny_model_dir):
    """Measured: quanto 8/4/2 bits 0.0014, 0.29, 1.84; hqq 8/4/3/2 bits 0.00097, 0.28, 0.82,
    1.84."""
    from conformance import kl_of

    for configs in (
        ["quanto-int8", "quanto-int4", "quanto-int2"],
        [f"hqq[bits={b},group=64]" for b in (8, 4, 3, 2)],
    ):
        kls = [kl_of(tiny_model_dir, c) for c in configs]
        assert kls == sorted(kls), dict(zip(configs, kls, strict=True))


class TestTorchaoInt8WeightOnly(BackendConformance):
    config = "torchao-int8wo"
    max_kl = 3e-3  # measured 0.00143
    bits = (8.0, 8.6)  # int8 + float32 scale and int8 zero point per row


class TestTorchaoInt8Dynamic(BackendConformance):
    config = "torchao-int8dq"
    max_kl = 7e-3  # measured 0.00315 (activations are quantized too)
    bits = (8.0, 8.6)


class TestTorchaoIntx4(BackendConformance):
    config = "torchao-intx[bits=4,group=32]"
    max_kl = 0.65  # measured 0.309
    bits = (9.25, 9.25)  # the CPU layout holds each 4-bit value in an int8, + scale and zero


def test_torchao_intx_kl_follows_bit_width(tiny_model_dir):
    """Measured: 8/4/2 bits 0.0012, 0.31, 1.91."""
    from conformance import kl_of

    kls = [kl_of(tiny_model_dir, f"torchao-intx[bits={b},group=32]") for b in (8, 4, 2)]
    assert kls == sorted(kls)
