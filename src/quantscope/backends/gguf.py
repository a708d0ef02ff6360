"""llama.cpp GGUF (``gguf[qtype=Q4_K_M]``, or ``gguf[file=PATH]`` for a file you have).

The numbers are llama.cpp's own: the file is evaluated by llama.cpp (llama-cpp-python) behind
a small adapter that the passes call like a transformers model; the scoring passes give it
whole windows as ``llama-perplexity`` does (see :class:`Scorer`). ``qtype`` quantizes with
llama.cpp's ``llama_model_quantize`` from the baseline's own GGUF file (a baseline given as a
GGUF file, like the bundled one: its de-quantized weights are exactly the baseline, so
re-quantizing the file quantizes the baseline), or, for a Hugging Face model, from an F32 GGUF
file that llama.cpp's own ``convert_hf_to_gguf.py`` makes of it; making, caching and reading
the files is ``gguf_files``. llama_cpp is imported only in these two modules.
"""

from __future__ import annotations

import math
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from quantscope.backends import Backend, EngineModel, Quantized
from quantscope.backends.gguf_files import converted, file_footprint, quantize_file
from quantscope.config import Gguf, ModelKind, ModelSpec, QuantConfig
from quantscope.config.kv import KvSpec
from quantscope.errors import UserError
from quantscope.models import ModelFiles


def _torch() -> Any:
    import torch

    return torch


class LlamaCppModel(EngineModel):
    """llama.cpp behind the interface the passes use: ``forward`` → ``.logits`` (B, T, V), or
    of the last ``logits_to_keep`` positions, incremental calls with ``past_key_values``,
    greedy ``generate``, and one empty parameter so the device is found."""

    def __init__(self, path: Path, config: Any, n_ctx: int, kv: KvSpec | None = None) -> None:
        from llama_cpp import Llama

        torch = _torch()
        self.kv_params = cache_params(kv)
        self.llm = Llama(
            model_path=str(path),
            logits_all=True,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_threads=torch.get_num_threads(),
            verbose=False,
            **self.kv_params,
        )
        self.config = config
        self.path = path
        self.made_s = math.nan  # seconds making the file took (set by the backend)
        super().__init__()
        self.scorer = Scorer(
            self.llm, self.kv_params
        )  # the batched scoring path (its context made on use)
        # freed with this object, or at exit before the interpreter tears llama_cpp down (the
        # Llama's own __del__ then finds the C functions gone and prints a TypeError): the
        # scoring context first, then the Llama with the model it uses
        weakref.finalize(self, _close_both, self.scorer, self.llm)

    def _run(self, ids: list[int], keep: bool) -> Any:
        torch = _torch()
        if not keep:
            self.llm.reset()
        start = self.llm.n_tokens
        self.llm.eval(ids)
        return torch.from_numpy(self.llm.scores[start : start + len(ids)].copy())  # (T, V)

    def __call__(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        use_cache: bool = False,
        past_key_values: Any = None,
        logits_to_keep: int = 0,
        **_: Any,
    ) -> Any:
        """Logits (B, T, V), or of the last ``logits_to_keep`` positions (0: all) as
        transformers does. Whole windows without a cache (the scoring passes) go through
        :class:`Scorer`: all rows in one ``llama_decode``, logits asked only where kept, and
        returned as a view valid until the next call."""
        torch = _torch()
        if attention_mask is None and past_key_values is None and not use_cache:
            logits = self.scorer.score(input_ids.tolist(), logits_to_keep)
            return SimpleNamespace(logits=torch.from_numpy(logits), past_key_values=None)
        rows = []
        for b, row in enumerate(input_ids.tolist()):
            n = int(attention_mask[b].sum()) if attention_mask is not None else len(row)
            logits = self._run(row[:n], keep=past_key_values is not None)
            pad = torch.zeros((len(row) - n, logits.shape[1]), dtype=logits.dtype)
            rows.append(torch.cat([logits, pad]))
        out = torch.stack(rows)[:, -logits_to_keep:] if logits_to_keep else torch.stack(rows)
        return SimpleNamespace(logits=out, past_key_values=self, cache=self)

    forward = __call__

    def generate(self, input_ids: Any, max_new_tokens: int, **_: Any) -> Any:
        """Greedy continuation of one prompt, stopping after the EOS token as transformers does."""
        torch = _torch()
        ids = input_ids[0].tolist()
        logits = self._run(ids, keep=False)
        out, eos = list(ids), getattr(self.config, "eos_token_id", None)
        for _step in range(max_new_tokens):
            nxt = int(logits[-1].argmax())
            out.append(nxt)
            if nxt == eos:
                break
            logits = self._run([nxt], keep=True)
        return torch.tensor([out])

    def at_depth(
        self, ids: list[int], depth: int, prefill: int, steps: int
    ) -> tuple[int, float, float]:
        """On a context of its own (this model's cache types): the bytes of sequence 0's
        cache after ``depth`` tokens (llama.cpp's own serialised size: K and V rows as stored),
        then the seconds of ``prefill`` tokens and of ``steps`` one-token steps (``ids`` holds
        them all)."""
        from llama_cpp import Llama, llama_state_seq_get_size

        torch = _torch()
        n_ctx = -(-(depth + prefill + steps + 1) // 256) * 256
        llm = Llama(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_batch=512,
            n_ubatch=512,
            n_threads=torch.get_num_threads(),
            verbose=False,
            **self.kv_params,
        )
        try:
            if depth:
                llm.eval(ids[:depth])
            nbytes = llama_state_seq_get_size(llm.ctx, 0) if depth else 0
            start = time.perf_counter()
            llm.eval(ids[depth : depth + prefill])
            prefill_s = time.perf_counter() - start
            start = time.perf_counter()
            for token in ids[depth + prefill : depth + prefill + steps]:  # one-token steps
                llm.eval([token])
            return nbytes, prefill_s, time.perf_counter() - start
        finally:
            llm.close()


def cache_params(kv: KvSpec | None) -> dict[str, Any]:
    """llama.cpp context settings for a KV-cache config: the K and V types, and flash
    attention (which a quantized V needs), on for every cache config so they compare among
    themselves; nothing (f16 cache, no flash attention) without one."""
    if kv is None:
        return {}
    import llama_cpp as lc

    def ggml(name: str) -> int:
        return int(getattr(lc, f"GGML_TYPE_{name.upper()}"))

    return {"type_k": ggml(kv.cache), "type_v": ggml(kv.type_v), "flash_attn": True}


class Scorer:
    """Whole windows scored the way llama.cpp's own ``llama-perplexity`` does: the B windows
    of a call are B sequences of one ``llama_decode`` (``n_seq_max`` = B, a separate KV range
    each), logits requested only for the last ``keep`` positions of each, read in place from
    llama.cpp's output buffer (no copy). The context is remade only when a call brings more
    or longer windows than it holds."""

    def __init__(self, llm: Any, kv_params: dict[str, Any] | None = None) -> None:
        import llama_cpp as lc

        self.lc, self.llm, self.n_threads = lc, llm, llm.n_threads
        self.kv_params = kv_params or {}
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(llm.model))
        self.ctx: Any = None
        self.batch: Any = None
        self._free: weakref.finalize | None = None
        self.shape = (0, 0)  # (sequences, tokens per sequence) the context holds
        self.layout: tuple[int, int, int] | None = None  # (B, T, keep) the batch is laid out for

    def _make(self, b: int, t: int) -> None:
        lc = self.lc
        self.close()
        params = lc.llama_context_default_params()
        params.n_ctx = params.n_batch = b * t
        params.n_ubatch = min(512, b * t)  # llama-perplexity's default micro-batch
        params.n_seq_max, params.kv_unified = b, False
        params.n_threads = params.n_threads_batch = self.n_threads
        # as llama-cpp-python's Llama (the path for caches and generation): on CPU, ggml's
        # flash attention rounds Q to fp16, which moves logits by up to ~1 on random tokens
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if self.kv_params:  # a KV-cache config: its types, flash attention on (cache_params)
            params.type_k, params.type_v = self.kv_params["type_k"], self.kv_params["type_v"]
            params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = lc.llama_init_from_model(self.llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {b} x {t} tokens")
        self.batch = lc.llama_batch_init(b * t, 0, 1)
        # freed with this object, or at exit before llama_cpp is torn down; holds the Llama
        # so its model outlives the context
        self._free = weakref.finalize(self, _free_context, lc, self.llm, self.ctx, self.batch)
        self.shape, self.layout = (b, t), None

    def _lay_out(self, b: int, t: int, keep: int) -> None:
        """Positions, sequence ids and logit flags: the same for every call of one shape."""
        batch = self.batch
        for s in range(b):
            for j in range(t):
                n = s * t + j
                batch.pos[n], batch.n_seq_id[n], batch.seq_id[n][0] = j, 1, s
                batch.logits[n] = j >= t - keep
        batch.n_tokens = b * t
        self.layout = (b, t, keep)

    def score(self, rows: list[list[int]], keep: int = 0) -> np.ndarray:
        """Logits (B, keep, V) float32 of B windows of equal length (keep 0: every position);
        a view into llama.cpp's buffer, valid until the next call."""
        lc = self.lc
        b, t = len(rows), len(rows[0])
        keep = min(keep or t, t)
        if b > self.shape[0] or t > self.shape[1] or self.ctx is None:
            self._make(max(b, self.shape[0]), max(t, self.shape[1]))
        if self.layout != (b, t, keep):
            self._lay_out(b, t, keep)
        tokens = np.ctypeslib.as_array(self.batch.token, shape=(b * t,))
        tokens[:] = np.asarray(rows, dtype=np.int32).reshape(-1)
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        code = lc.llama_decode(self.ctx, self.batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed (code {code}) on {b} x {t} tokens")
        out = np.ctypeslib.as_array(lc.llama_get_logits(self.ctx), shape=(b * keep, self.vocab))
        return out.reshape(b, keep, self.vocab)

    def close(self) -> None:
        if self._free is not None:
            self._free()
        self.ctx = self.batch = self._free = None


def _close_both(scorer: Scorer, llm: Any) -> None:
    scorer.close()
    llm.close()


def _free_context(lc: Any, llm: Any, ctx: Any, batch: Any) -> None:
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)


class GgufBackend(Backend):
    name = "llama.cpp"
    module = "llama_cpp"
    extra = "gguf"

    def load_model(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Any, float]:
        from transformers import AutoConfig

        assert isinstance(config, Gguf)
        path, quantize_s = self.file(files, spec, config)
        start = time.perf_counter()
        hf_config = AutoConfig.from_pretrained(str(files.folder))
        model = LlamaCppModel(path, hf_config, n_ctx=2048, kv=config.kv)
        model.made_s = quantize_s
        return model, time.perf_counter() - start

    def file(self, files: ModelFiles, spec: ModelSpec, config: Gguf) -> tuple[Path, float]:
        """The GGUF file to evaluate and the seconds making it took (NaN: given, not made)."""
        if config.file:
            path = Path(config.file).expanduser()
            if not path.is_file():
                raise UserError(f"No such GGUF file '{config.file}'.")
            return path, math.nan
        if files.kind in (ModelKind.BUNDLED, ModelKind.GGUF_FILE):
            return quantize_file(Path(files.origin), config.qtype)
        source, convert_s = converted(files, spec)  # a Hugging Face model: converted to F32
        path, quantize_s = quantize_file(source, config.qtype)
        return path, quantize_s + convert_s

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        """Quantized by llama.cpp into the file: bytes and the type mix are read from it."""
        footprint, mix = file_footprint(model.path)
        kv = (
            f", KV cache K {config.kv.cache} V {config.kv.type_v}, flash attention"
            if config.kv
            else ""
        )
        return Quantized(footprint=footprint, made_s=model.made_s, note=f"types {mix}{kv}")

    def library(self) -> str:
        import llama_cpp

        return f"llama.cpp via llama-cpp-python {llama_cpp.__version__}"


BACKEND = GgufBackend()
