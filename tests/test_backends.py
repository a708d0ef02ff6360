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
