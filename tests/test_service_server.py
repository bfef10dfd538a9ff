"""The real server: `python -m service` as a subprocess on a free port, talked to over TCP."""

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from held_server import HELD_N
from real_server import running_server, wait_for_file

from service.inference import SamplingJob, run_job
from service.registry import load_model


@pytest.fixture
def server(tmp_path: Path, checkpoint_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """(base URL, process, log file) of a server on one good and one corrupted checkpoint; a
    request of `HELD_N` samples is held in flight until tmp_path/hold/release exists."""
    folder = tmp_path / "served"
    folder.mkdir()
    good = (checkpoint_dir / "two_gmm_1D.safetensors").read_bytes()
    (folder / "two_gmm_1D.safetensors").write_bytes(good)
    corrupted = bytearray(good)
    corrupted[8:40] = b"#" * 32  # clobber the start of the JSON header
    (folder / "corrupted.safetensors").write_bytes(bytes(corrupted))

    log_path = tmp_path / "server.log"
    with running_server(folder, log_path, hold=tmp_path / "hold") as (base_url, process):
        yield base_url, process, log_path


def test_real_server(
    server: tuple[str, subprocess.Popen[bytes], Path], checkpoint_dir: Path, tmp_path: Path
) -> None:
    base_url, process, log_path = server
    hold = tmp_path / "hold"
    with httpx.Client(base_url=base_url, timeout=30) as client:
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready", "models": ["two_gmm_1D"]})
        assert [m["name"] for m in client.get("/models").json()["models"]] == ["two_gmm_1D"]
        assert client.get("/models/corrupted").status_code == 404

        # Same seed, another process: the same samples as sampling here, in this test's process.
        params = {"sampler": "gamma", "steps": 3, "n": 257, "seed": 2024}
        body = client.get("/sample", params=params).json()
        model = load_model(checkpoint_dir / "two_gmm_1D.safetensors", torch.device("cpu"))
        job = SamplingJob(model=model, sampler="gamma", steps=3, n=257, seed=2024, noise="random", gamma=0.5)
        expected = run_job(job, torch.device("cpu")).samples
        np.testing.assert_array_equal(np.asarray(body["samples"], dtype=np.float32), expected)

        bad = client.get("/sample", params={"sampler": "bogus"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["loc"] == ["query", "sampler"]
        assert "ctm_models_loaded 1.0" in client.get("/metrics").text

        # /healthz answers promptly while a request is sampling: it is held in flight, sampling
        # for real again and again (tests/held_server.py), until the probes are done.
        big: dict[str, object] = {}

        def sample_big() -> None:
            params = {"sampler": "multistep", "steps": 100, "n": HELD_N}
            big["response"] = httpx.get(f"{base_url}/sample", params=params, timeout=120)

        worker = threading.Thread(target=sample_big)
        worker.start()
        wait_for_file(hold / "started")
        health_latencies = []
        for _ in range(5):
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            health_latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
        assert worker.is_alive()  # every probe ran while the request was in flight
        (hold / "release").touch()
        worker.join(timeout=120)
        response = big["response"]
        assert isinstance(response, httpx.Response)
        assert response.status_code == 200
        assert len(response.json()["samples"]) == HELD_N
        assert max(health_latencies) < 0.5, health_latencies

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=15) == 0
    log = log_path.read_text()
    rejected = [line for line in log.splitlines() if "checkpoint rejected" in line]
    assert len(rejected) == 1
    assert "file=corrupted.safetensors" in rejected[0]
    assert "service started" in log
