"""The Ray executor on a real Ray cluster on this machine, on loopback only: the cluster runs in
a network namespace of its own whose only interface is loopback (``unshare --net``; Ray would
otherwise advertise the machine's network address), a head started with ``ray start --head``
on 127.0.0.1 and a second node joined to it (separate processes, one CPU each). A study of 2
models (the bundled one and a tiny one) × 3 configs (``ray_cluster_check.py``): results equal
the local executor's number for number; a worker killed with SIGKILL in the middle of a
config is retried and nothing is lost; a driver killed and started again reuses what was
stored. Every wait is bounded; the cluster is stopped at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
pytest.importorskip("ray")
CHECK = Path(__file__).with_name("ray_cluster_check.py")


def _loopback_only() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _loopback_only(), reason="needs unshare --net (root) for a loopback-only Ray"
)
def test_a_study_on_a_two_node_ray_cluster(tiny_model_dir: Path, tmp_path: Path) -> None:
    body = {
        "name": "bundled-and-tiny",
        "models": ["bundled", str(tiny_model_dir)],
        "configs": ["fp32", "bf16", "rtn[bits=4,group=32]"],
        "store": "ray.sqlite",
        "settings": {
            "tokens": 256,
            "context": 128,
            "stride": 64,
            "speed_reps": 1,
            "max_new_tokens": 2,
            "ref_topk": 32,
        },
    }
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(body))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a private namespace: no one else here
    script = f"ip link set lo up && exec {sys.executable} {CHECK} {study} {tmp_path}"
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen["nodes"]) == 2 and set(seen["nodes"]) == {"127.0.0.1"}
    assert seen["killed"], "no worker was seen measuring a config"
    assert seen["ray_statuses"] == ["measured"] * 6  # the killed config was retried
    assert seen["same_numbers"] and seen["rows"] == 6
    resume = seen["resume"]
    assert 2 <= resume["stored_when_killed"] < 6 and resume["rerun_code"] == 0
    assert resume["native_lines"] == []  # Ray's own C++ lines go to the debug log
    assert resume["total"] == 6
    assert "reused" in resume["statuses"] and "measured" in resume["statuses"]
