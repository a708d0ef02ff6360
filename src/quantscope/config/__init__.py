"""Typed, frozen specifications of a run, parsed and validated once, at the edge.

A run is a :class:`RunSpec`: which model (:class:`ModelSpec`), which quantization configs
(one :class:`QuantConfig` subclass per method family, ``methods``), which text and window
rule (:class:`DataSpec`), and how to measure. Everything downstream receives these objects,
never loose keyword arguments. ``base`` holds what every config shares and the field-driven
grammar, ``methods`` the built-in families, ``registry`` name → class (open to plug-ins),
``quant`` the config strings and files, ``run`` the model, text and run settings.
"""

from quantscope.config.base import QuantConfig, WeightConfig
from quantscope.config.budget import Budget, Margins, parse_margins, parse_percent
from quantscope.config.grammar import DType, did_you_mean, matches, param, select_modules, variant
from quantscope.config.methods import (
    BUILTIN,
    GPTQ_BITS,
    Bnb4,
    Bnb4Type,
    BnbInt8,
    Gguf,
    Gptq,
    Hqq,
    Int8Scheme,
    Precision,
    Quanto,
    QuantoWeights,
    Rtn,
    TorchAoInt4,
    TorchAoInt8,
    TorchAoIntx,
    precision_config,
)
from quantscope.config.quant import (
    CONFIG_FILE_FORMAT,
    parse_config,
    parse_config_list,
    read_config_file,
    split_config_list,
)
from quantscope.config.registry import backend_of, config_class, names
from quantscope.config.run import (
    DEFAULT_CONFIGS,
    DEFAULT_PROMPTS,
    DEFAULT_SPENDING,
    DataSpec,
    ModelKind,
    ModelSpec,
    Placement,
    RunSpec,
    model_spec,
    parse_placement,
    placements,
)

__all__ = [
    "BUILTIN",
    "CONFIG_FILE_FORMAT",
    "DEFAULT_CONFIGS",
    "DEFAULT_PROMPTS",
    "DEFAULT_SPENDING",
    "GPTQ_BITS",
    "Bnb4",
    "Bnb4Type",
    "BnbInt8",
    "Budget",
    "DType",
    "DataSpec",
    "Gguf",
    "Gptq",
    "Hqq",
    "Int8Scheme",
    "Margins",
    "ModelKind",
    "ModelSpec",
    "Placement",
    "Precision",
    "QuantConfig",
    "Quanto",
    "QuantoWeights",
    "Rtn",
    "RunSpec",
    "TorchAoInt4",
    "TorchAoInt8",
    "TorchAoIntx",
    "WeightConfig",
    "backend_of",
    "config_class",
    "did_you_mean",
    "matches",
    "model_spec",
    "names",
    "param",
    "parse_config",
    "parse_config_list",
    "parse_margins",
    "parse_percent",
    "parse_placement",
    "placements",
    "precision_config",
    "read_config_file",
    "select_modules",
    "split_config_list",
    "variant",
]
