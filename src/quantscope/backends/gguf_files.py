"""GGUF files for the llama.cpp backend: made by llama.cpp (``llama_model_quantize`` from a
GGUF file; ``convert_hf_to_gguf.py`` for a Hugging Face model, fetched from the llama-cpp-python
source package of the installed version), cached, and read (bytes, bits per weight, type mix).
llama_cpp and gguf are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from quantscope import chaos
from quantscope.cache import cache_dir, made
from quantscope.config import ModelSpec
from quantscope.errors import UserError
from quantscope.models import ModelFiles


def file_footprint(path: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Bytes, bits per weight and tensor-type mix of a GGUF file, from its tensor table."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    total = params = linear_bytes = linear_params = 0
    mix: Counter[str] = Counter()
    for t in reader.tensors:
        total += int(t.n_bytes)
        params += int(t.n_elements)
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
            linear_bytes += int(t.n_bytes)
            linear_params += int(t.n_elements)
            mix[t.tensor_type.name] += 1
    footprint = {
        "weight_bytes": float(total),
        "weight_mb": total / 2**20,
        "params": float(params),
        "bits_per_weight": 8.0 * total / params,
        "linear_bits_per_weight": 8.0 * linear_bytes / linear_params,
        "quantized_linears": float(sum(mix.values())),
    }
    return footprint, dict(mix)


def _ftype(qtype: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    value = getattr(llama_cpp, f"LLAMA_FTYPE_ALL_{qtype.upper()}", value)  # F32
    if value is None:
        known = sorted(
            n.removeprefix("LLAMA_FTYPE_MOSTLY_")
            for n in dir(llama_cpp)
            if n.startswith("LLAMA_FTYPE_MOSTLY_")
        )
        raise UserError(f"llama.cpp has no quantization type '{qtype}'; it has {', '.join(known)}.")
    return int(value)


def quantize_file(source: Path, qtype: str) -> tuple[Path, float]:
    """``source`` quantized to ``qtype`` by llama.cpp, cached; the path and the seconds it took
    when it was made."""
    import llama_cpp

    head = hashlib.sha256(f"{source.resolve()}:{source.stat().st_size}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{source.stem}-{head}-{qtype.upper()}.gguf"
    ftype = _ftype(qtype)

    def quantize(tmp: Path) -> dict[str, Any]:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        start = time.perf_counter()
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if code != 0:
            raise UserError(f"llama.cpp could not quantize '{source}' to {qtype} (code {code}).")
        chaos.point("gguf-quantize")  # the file written, not yet in place
        return {"seconds": time.perf_counter() - start}

    return target, float(made(target, quantize)["seconds"])


CONVERTER_ENV = "QUANTSCOPE_LLAMA_CPP"  # a folder holding convert_hf_to_gguf.py


def converter() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``: in ``$QUANTSCOPE_LLAMA_CPP``, else where
    :func:`fetch_converter` puts the one matching the installed llama-cpp-python."""
    import llama_cpp

    folder = os.environ.get(CONVERTER_ENV) or cache_dir() / f"llama.cpp-{llama_cpp.__version__}"
    script = Path(folder).expanduser() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise UserError(
            f"llama.cpp's converter is not at {script}; run 'quantscope gguf-converter' to "
            f"fetch the one matching llama-cpp-python {llama_cpp.__version__}, or set "
            f"{CONVERTER_ENV} to a llama.cpp checkout."
        )
    return script


_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def fetch_converter(into: Path | None = None) -> Path:
    """Fetch llama.cpp's converter (with its ``conversion`` package and the ``gguf-py`` it
    needs) from the llama-cpp-python source package of the installed version, by pip."""
    import llama_cpp

    version = llama_cpp.__version__
    target = into or cache_dir() / f"llama.cpp-{version}"
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",
            "-q",
            "-d",
            tmp,
            f"llama-cpp-python=={version}",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if done.returncode or not archives:
            raise UserError(
                f"pip could not fetch llama-cpp-python {version}'s source: {_last_line(done)}"
            )
        with tarfile.open(archives[0]) as tar:
            members = []
            for member in tar.getmembers():
                _, _, inner = member.name.partition("/vendor/llama.cpp/")
                if inner and inner.startswith(_CONVERTER_PARTS):
                    member.name = inner
                    members.append(member)
            tar.extractall(target, members=members, filter="data")
    return target


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    """The last line a failed command printed: what it says went wrong."""
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


def converted(files: ModelFiles, spec: ModelSpec) -> tuple[Path, float]:
    """The baseline as an F32 GGUF file made by llama.cpp's converter (cached), and the
    seconds converting took when it was made."""
    target = cache_dir() / "gguf" / f"{files.fingerprint}-F32.gguf"
    tok_config = files.folder / "tokenizer_config.json"
    custom = any(files.folder.glob("*.py")) or (
        tok_config.is_file() and "auto_map" in json.loads(tok_config.read_text())
    )
    if custom and not spec.trust_remote_code:
        raise UserError(
            f"{files.name} ships its own code, which llama.cpp's converter would run (it loads "
            "the tokenizer with trust_remote_code); pass --trust-remote-code if you trust it."
        )
    script = converter()

    def convert(tmp: Path) -> dict[str, Any]:
        command = [
            sys.executable,
            str(script),
            str(files.folder),
            "--outtype",
            "f32",
            "--outfile",
            str(tmp),
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise UserError(
                f"llama.cpp's converter could not convert {files.name}: {_last_line(done)}"
            )
        return {"seconds": time.perf_counter() - start, "converter": str(script)}

    return target, float(made(target, convert)["seconds"])
