"""Run inside a network namespace that has only loopback (``unshare --net``; see
test_sweep_ray.py): a Ray head on 127.0.0.1 and a second node joined to it, a study on it with
a worker killed by SIGKILL mid-config, the same study on the local executor, a driver killed
and started again; stops the cluster and prints what it saw as JSON on its last line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
TIMING = ("tps", "_s", "peak_")  # speed, time and peak memory are measured anew


def start_cluster() -> str:
    """A head and a second node (one CPU each) on 127.0.0.1; Ray's folder kept short (its
    socket paths must fit in 107 characters)."""
    import tempfile

    temp = tempfile.mkdtemp(prefix="qs-ray-", dir="/tmp")
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = [
        RAY,
        "start",
        "--head",
        "--port=6379",
        "--include-dashboard=false",
        f"--temp-dir={temp}",
        *common,
    ]
    subprocess.run(head, check=True, capture_output=True, timeout=120)
    subprocess.run(
        [RAY, "start", "--address=127.0.0.1:6379", *common],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return "127.0.0.1:6379"


def kill_one_worker(killed: list[int], deadline_s: float = 300) -> None:
    """SIGKILL the first worker seen measuring a config."""
    import psutil

    deadline = time.time() + deadline_s
    while not killed and time.time() < deadline:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if "ray::_config_task" in " ".join(proc.info["cmdline"] or []):
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(proc.info["pid"])
                return
        time.sleep(0.05)


def rows(report) -> list[dict[str, float]]:
    return [
        {k: v for k, v in o.result.metrics.items() if not any(t in k for t in TIMING)}
        for r in report.runs
        for o in r.outcomes
    ]


def driver_killed_and_restarted(study_file: Path, address: str) -> dict[str, object]:
    store = study_file.parent / "resume.sqlite"
    command = [
        sys.executable,
        "-c",
        "from quantscope.cli import main; main()",
        "sweep",
        str(study_file),
        "--executor",
        "ray",
        "--address",
        address,
        "--store",
        str(store),
    ]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, stored = time.time() + 300, 0
    while stored < 2 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
        if store.exists():
            try:  # the driver creates the file a moment before its tables
                with sqlite3.connect(store, timeout=30) as db:
                    stored = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                continue
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    with sqlite3.connect(store) as db:
        total = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        latest = db.execute("SELECT id FROM runs ORDER BY created DESC, id DESC LIMIT 2")
        ids = [r[0] for r in latest.fetchall()]
        statuses = [
            s
            for (s,) in db.execute(
                f"SELECT status FROM run_results WHERE run_id IN ({','.join('?' * len(ids))})", ids
            )
        ]
    return {
        "stored_when_killed": stored,
        "rerun_code": again.returncode,
        "rerun_output": " ".join(again.stdout.split())[-600:],
        # C++ log lines ("network_util.cc:330: …") that reached the screen
        "native_lines": [
            line for line in (again.stdout + again.stderr).splitlines() if ".cc:" in line
        ],
        "total": total,
        "statuses": statuses,
    }


def main(study_file: Path, temp: Path) -> None:
    from quantscope.sweeps import Executor, run_sweep
    from quantscope.sweeps.sweep_file import read_sweep

    address, seen = start_cluster(), {}
    try:
        import ray

        ray.init(address=address)
        seen["nodes"] = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        ray.shutdown()
        study = read_sweep(study_file)
        killed: list[int] = []
        killer = threading.Thread(target=kill_one_worker, args=(killed,), daemon=True)
        killer.start()
        start = time.perf_counter()
        on_ray = run_sweep(study, executor=Executor.RAY, address=address, retries=2)
        seen["ray_s"] = time.perf_counter() - start
        killer.join(10)
        seen["killed"] = killed
        seen["ray_statuses"] = [o.status.value for r in on_ray.runs for o in r.outcomes]
        start = time.perf_counter()
        local = run_sweep(dataclasses.replace(study, store=str(temp / "local.sqlite")))
        seen["local_s"] = time.perf_counter() - start
        seen["same_numbers"] = rows(local) == rows(on_ray)
        seen["rows"] = len(rows(on_ray))
        seen["resume"] = driver_killed_and_restarted(study_file, address)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    print(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
