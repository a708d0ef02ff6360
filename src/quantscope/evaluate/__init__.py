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
    token_values,
)
from quantscope.evaluate.depth import DEFAULT_DEPTHS, depth_metrics, depths_for, depths_in
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
from quantscope.evaluate.scoring import Rows, make_cache, output_head, scored_logits, through_cache
from quantscope.evaluate.served import compare_served, load_metrics

__all__ = [
    "DEFAULT_DEPTHS",
    "Advance",
    "PeakMemory",
    "Rows",
    "TokenStats",
    "accuracy_metrics",
    "by_position_metrics",
    "compare_pass",
    "compare_served",
    "decode_speed",
    "depth_metrics",
    "depths_for",
    "depths_in",
    "encode_prompt",
    "first_difference",
    "generate",
    "load_metrics",
    "loglikelihoods",
    "make_cache",
    "model_device",
    "output_head",
    "per_source_metrics",
    "position_buckets",
    "prefill_speed",
    "reference_chunks",
    "reference_pass",
    "scored_logits",
    "speed_metrics",
    "through_cache",
    "token_values",
    "weight_footprint",
]
