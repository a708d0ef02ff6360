"""Typed, frozen specifications of a run, parsed and validated once, at the edge.

A run is a :class:`RunSpec`: which model (:class:`ModelSpec`), which quantization configs
(:class:`QuantConfig`), which text and window rule (:class:`DataSpec`), and how to measure.
Everything downstream receives these objects, never loose keyword arguments. ``quant`` holds
the quantization configs and their grammar; ``run`` the model, text and run settings.
"""

from quantscope.config.quant import (
    CONFIG_FILE_FORMAT,
    GPTQ_BITS,
    PARAMS_OF,
    DType,
    Method,
    QuantConfig,
    did_you_mean,
    matches,
    parse_config,
    parse_config_list,
    precision_config,
    read_config_file,
    select_modules,
    split_config_list,
)
from quantscope.config.run import (
    DEFAULT_CONFIGS,
    DEFAULT_PROMPTS,
    DataSpec,
    ModelKind,
    ModelSpec,
    RunSpec,
    model_spec,
)

__all__ = [
    "CONFIG_FILE_FORMAT", "DEFAULT_CONFIGS", "DEFAULT_PROMPTS", "GPTQ_BITS", "PARAMS_OF",
    "DType", "DataSpec", "Method", "ModelKind", "ModelSpec", "QuantConfig", "RunSpec",
    "did_you_mean", "matches", "model_spec", "parse_config", "parse_config_list",
    "precision_config", "read_config_file", "select_modules", "split_config_list",
]  # fmt: skip
