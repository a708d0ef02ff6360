"""Mixed precision: how much each part of a model suffers under a quantization config, and
the smallest mix of quantized and fallback-precision parts that meets an accuracy budget.

Both run on an *emulation* of the config (its backend's ``emulate``): the baseline is loaded
once, every linear's quantized and fallback weights are computed once, and a part is
switched by swapping which tensor its linears hold. Measuring one variant then costs one
forward pass over the calibration windows, with the exact KL against the baseline's
log-probs held in memory (``evaluate.calibration``). Calibration text is training text,
never the evaluation text. The search verifies its choice with a real load and a full
evaluation on the evaluation text (``runner.run``), since emulation leaves out details of
the kernels (each backend says which).

A *unit* is one linear layer (``by="linear"``) or all linears of one block (``by="block"``).

``sensitivity`` measures the units; ``search`` picks, verifies and saves the mix.
"""

from quantscope.mixed.search import (
    SearchResult,
    SearchSpec,
    chosen_config,
    order_units,
    search,
)
from quantscope.mixed.sensitivity import (
    MODES,
    Bench,
    Emulated,
    SensitivitySpec,
    bench,
    emulate,
    find_units,
    sensitivity,
)

__all__ = [
    "MODES",
    "Bench",
    "Emulated",
    "SearchResult",
    "SearchSpec",
    "SensitivitySpec",
    "bench",
    "chosen_config",
    "emulate",
    "find_units",
    "order_units",
    "search",
    "sensitivity",
]
