"""Pure functions over tensors and arrays: each returns a value with its uncertainty.

Metrics never load models; they receive per-token arrays or logits and return numbers.
"""

from quantscope.metrics.stats import Estimate, mean_se, paired_log_ratio, proportion, quantiles

__all__ = ["Estimate", "mean_se", "paired_log_ratio", "proportion", "quantiles"]
