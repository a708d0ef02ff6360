"""Write tests/fixtures/token_values.npz: per-token values of the bundled model from a run in a
results database, the fixture the statistics harness resamples (tests/test_harness.py).

    quantscope run --tokens 16384 --configs fp32,bf16,bnb-int8,bnb-nf4,bnb-fp4 \
        --store /tmp/fix/results.sqlite --speed-reps 1 --max-new-tokens 4
    python benchmarks/make_token_fixture.py /tmp/fix/results.sqlite

Kept per config: the per-token loss change against the baseline (nll − base nll, float32),
the KL to the baseline (float32) and top-1 agreement (bits); the windows as (id, length) runs.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from quantscope.store import Store
from quantscope.token_values import TokenValues

CONFIGS = ("bf16", "bnb-int8", "bnb-nf4", "bnb-fp4")
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "token_values.npz"


def main(path: str) -> None:
    with Store(Path(path)) as store:
        report = store.report("latest")
        arrays: dict[str, np.ndarray] = {}
        for r in report.results:
            name = str(r.meta.get("config", r.config))
            if name not in CONFIGS:
                continue
            tv = TokenValues.from_bytes(store.token_values(r.key))
            arrays[f"{name}/dnll"] = (tv.nll - tv.base_nll).astype(np.float32)
            arrays[f"{name}/kl"] = tv.kl.astype(np.float32)
            arrays[f"{name}/agree"] = np.packbits(tv.agree)
            arrays["clusters"] = tv.clusters.astype(np.int16)
        info = {
            "run": report.run_id,
            "model": report.settings.get("model"),
            "tokens": len(arrays["clusters"]),
            "windows": len(np.unique(arrays["clusters"])),
            "settings": {k: report.settings.get(k) for k in ("context", "stride", "tokens_scored")},
            "configs": [c for c in CONFIGS if f"{c}/kl" in arrays],
        }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, info=np.array(json.dumps(info)), **arrays)
    OUT.write_bytes(buffer.getvalue())
    print(f"{OUT}: {len(buffer.getvalue()) / 1024:.0f} KiB, {info}")


if __name__ == "__main__":
    main(sys.argv[1])
