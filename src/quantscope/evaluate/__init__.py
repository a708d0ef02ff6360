"""The passes: baseline reference, streamed comparison, efficiency, generations.

One module per part: ``accuracy`` (reference and comparison passes, accuracy metrics),
``efficiency`` (weight bytes, speed, peak memory), ``generation`` (greedy generations and
log-likelihood scoring); ``device`` holds what they share.
"""

from quantscope.evaluate.accuracy import (
    Advance,
    TokenStats,
    accuracy_metrics,
    by_position_metrics,
    compare_pass,
    per_source_metrics,
    position_buckets,
    reference_chunks,
    reference_pass,
    scored_logits,
    token_values,
)
from quantscope.evaluate.device import model_device
from quantscope.evaluate.efficiency import (
    PeakMemory,
    decode_speed,
    prefill_speed,
    speed_metrics,
    weight_footprint,
)
from quantscope.evaluate.generation import (
    encode_prompt,
    first_difference,
    generate,
    loglikelihoods,
)

__all__ = [
    "Advance",
    "PeakMemory",
    "TokenStats",
    "accuracy_metrics",
    "by_position_metrics",
    "compare_pass",
    "decode_speed",
    "encode_prompt",
    "first_difference",
    "generate",
    "loglikelihoods",
    "model_device",
    "per_source_metrics",
    "position_buckets",
    "prefill_speed",
    "reference_chunks",
    "reference_pass",
    "scored_logits",
    "speed_metrics",
    "token_values",
    "weight_footprint",
]
