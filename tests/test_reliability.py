"""Reliability and access in-process: hot reload and atomic swaps, untrusted files in the checkpoint
directory, request time limits, the API key, the admin token, CORS, and the image's user.

The real server (SIGTERM, logs, load) is in test_reliability_server.py; the fuzzing in test_fuzz_api.py.
"""

import asyncio
import errno
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from app_client import serve

import service.inference
import service.registry
from ctm_core.checkpoint import atomic_write_bytes
from ctm_core.config import NoiseConfig
from service.config import Settings
from service.inference import SamplingJob, run_job
from service.registry import FileStamp, ModelRegistry, load_model

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "admin-token-for-tests-0123456789"
API_KEY = "api-key-for-tests-9876543210"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NOISE = NoiseConfig(sigma_min=0.002, sigma_max=10.0, sigma_data=0.5)
SWAP_PARAMS = {"model": "m", "sampler": "multistep", "steps": 3, "n": 32, "noise": "quantile", "seed": 7}


def versions(folder: Path, make_checkpoint: Any, name: str = "m") -> tuple[bytes, bytes]:
    """Two versions (other weights) of one model, as file contents."""
    contents = []
    for seed in (1, 2):
        path = make_checkpoint(folder / f".v{seed}" / f"{name}.safetensors", noise=NOISE, seed=seed)
        contents.append(path.read_bytes())
    return contents[0], contents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_samples(path: Path, params: dict[str, Any]) -> np.ndarray:
    """What /sample returns for `params` from the checkpoint at `path`, computed here."""
    model = load_model(path, torch.device("cpu"))
    job = SamplingJob(
        model=model,
        sampler=params["sampler"],
        steps=params["steps"],
        n=params["n"],
        seed=params["seed"],
        noise=params["noise"],
        gamma=0.5,
    )
    return run_job(job, torch.device("cpu")).samples


def same_samples(body: dict[str, Any], expected: np.ndarray) -> bool:
    return np.array_equal(np.asarray(body["samples"], dtype=np.float32), expected)


async def reload(client: httpx.AsyncClient, **headers: str) -> dict[str, Any]:
    response = await client.post("/admin/reload", headers=ADMIN | headers)
    assert response.status_code == 200, response.text
    return response.json()


# ---- hot reload -----------------------------------------------------------------------------------


def test_a_file_stamp_changes_with_each_fact_it_holds(tmp_path: Path) -> None:
    """Reload compares stamps, not contents: a new inode, size or mtime alone must read as a new
    version (a copy renamed over the file keeps size and mtime with `cp -p`; an in-place rewrite
    keeps the inode)."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"a" * 64)
    first = FileStamp.of(path)
    when = (first.mtime_ns, first.mtime_ns)

    replacement = tmp_path / "new"
    replacement.write_bytes(b"b" * 64)
    os.utime(replacement, ns=when)
    os.replace(replacement, path)  # same size and mtime, another inode
    renamed = FileStamp.of(path)
    assert renamed.inode != first.inode and renamed != first

    path.write_bytes(b"c" * 65)  # in place: same inode, other size, the old mtime
    os.utime(path, ns=when)
    resized = FileStamp.of(path)
    assert (resized.inode, resized.mtime_ns) == (renamed.inode, renamed.mtime_ns) and resized != renamed

    path.write_bytes(b"d" * 65)  # in place, same size, a later mtime
    os.utime(path, ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    touched = FileStamp.of(path)
    assert (touched.inode, touched.size) == (resized.inode, resized.size) and touched != resized
    assert touched.device == os.stat(path).st_dev


def test_a_reload_reports_its_own_duration_and_a_missing_directory(
    tmp_path: Path, make_checkpoint: Any, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "served"
    make_checkpoint(folder / "m.safetensors", noise=NOISE, seed=1)
    registry = ModelRegistry()
    before = time.perf_counter()
    report = registry.reload(folder, torch.device("cpu"))
    took = time.perf_counter() - before
    assert report.added == ["m"] and 0 < report.seconds <= took

    missing = tmp_path / "not-there"
    with caplog.at_level(logging.WARNING, logger="service.registry"):
        report = registry.reload(missing, torch.device("cpu"))
    assert report.removed == ["m"] and not report.snapshot.models
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"checkpoint directory missing dir={missing}"]


def test_a_file_that_cannot_be_read_is_rejected_with_the_reason(
    tmp_path: Path, make_checkpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root every file reads, so the operating system's refusal is simulated at the stat."""
    folder = tmp_path / "served"
    make_checkpoint(folder / "m.safetensors", noise=NOISE, seed=1)

    def refused(cls: type, path: Path) -> FileStamp:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(FileStamp, "of", classmethod(refused))
    report = ModelRegistry().reload(folder, torch.device("cpu"))
    assert not report.snapshot.models
    assert report.snapshot.rejections["m.safetensors"].reason == "cannot read (Permission denied)"


def test_a_reload_reads_only_what_changed_and_logs_each_change_once(
    tmp_path: Path, make_checkpoint: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The registry's story, file by file: the files are named so that the one that changes sorts
    first, and every reload must still see the ones after it."""
    folder = tmp_path / "served"
    folder.mkdir()
    v1, v2 = versions(tmp_path, make_checkpoint)
    for name in "abc":
        (folder / f"{name}.safetensors").write_bytes(v1)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(v1)
    reads: list[str] = []
    real_load_model = service.registry.load_model

    def counting_load_model(path: Path, *args: Any, **kwargs: Any) -> Any:
        reads.append(path.stem)
        if path.stem == "b" and path.read_bytes() == v2:
            raise RuntimeError("boom")
        return real_load_model(path, *args, **kwargs)

    monkeypatch.setattr(service.registry, "load_model", counting_load_model)
    registry = ModelRegistry()
    cpu = torch.device("cpu")

    def step() -> tuple[list[str], list[str]]:
        """Reload; the files read and the registry's log lines."""
        reads.clear()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="service.registry"):
            report = registry.reload(folder, cpu)
        assert sorted(report.snapshot.models) == [n for n in "abc" if (folder / f"{n}.safetensors").exists()]
        return list(reads), [r.getMessage() for r in caplog.records]

    h1, h2 = sha(v1)[:12], sha(v2)[:12]
    assert step() == (
        ["a", "b", "c"],
        [f"checkpoint loaded model={n} file={n}.safetensors sha256={h1}" for n in "abc"],
    )
    assert step() == ([], [])  # unchanged: nothing read, nothing said

    os.utime(folder / "a.safetensors", ns=(1, 10**18))  # touched, same bytes: read once, silently
    assert step() == (["a"], [])
    assert step() == ([], [])

    (folder / "a.safetensors").write_bytes(b"not a checkpoint")
    reads_, lines = step()
    reason = registry.snapshot().rejections["a.safetensors"].reason
    assert reads_ == ["a"]
    assert lines == [f"checkpoint rejected file=a.safetensors reason={reason!r} serving_previous={h1}"]
    (folder / "a_link.safetensors").symlink_to(outside)  # refused before reading, sorts before b
    assert step() == (
        [],
        [
            "checkpoint rejected file=a_link.safetensors reason='a symbolic link to a file outside the "
            "checkpoint directory: not read'"
        ],
    )
    assert step() == ([], [])  # the same refusals: not retried, not repeated

    (folder / "a.safetensors").write_bytes(v2)
    assert step() == (["a"], [f"checkpoint loaded model=a file=a.safetensors sha256={h2} replaces={h1}"])

    (folder / "b.safetensors").write_bytes(v2)  # its loader fails in a way no check foresaw
    boom = "reason='unexpected RuntimeError (boom)'"
    assert step() == (["b"], [f"checkpoint rejected file=b.safetensors {boom} serving_previous={h1}"])
    assert registry.snapshot().models["b"].sha256[:12] == h1
    assert registry.snapshot().rejections["b.safetensors"].file_name == "b.safetensors"
    assert step() == ([], [])

    (folder / "c.safetensors").unlink()
    assert step() == ([], [f"checkpoint removed model=c sha256={h1}"])


async def test_reload_picks_up_new_replaced_and_removed_files(
    tmp_path: Path, make_checkpoint: Any, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    v1, v2 = versions(tmp_path, make_checkpoint)
    atomic_write_bytes(folder / "m.safetensors", v1)
    async with serve(folder, admin_token=TOKEN, default_model="m") as client:
        assert (await client.get("/sample")).json()["model_sha256"] == sha(v1)
        assert (await reload(client))["unchanged"] == ["m"]  # nothing changed: nothing reloaded

        make_checkpoint(folder / "new.safetensors", noise=NOISE, seed=3)
        atomic_write_bytes(folder / "m.safetensors", v2)
        with caplog.at_level("INFO", logger="service"):
            body = await reload(client)
        assert (body["added"], body["replaced"], body["removed"]) == (["new"], ["m"], [])
        assert body["models"]["m"] == sha(v2)
        assert (await client.get("/sample")).json()["model_sha256"] == sha(v2)
        assert (await client.get("/models/m")).json()["sha256"] == sha(v2)
        assert any(
            "models reloaded trigger=admin added=new replaced=m" in r.getMessage() for r in caplog.records
        )

        (folder / "new.safetensors").unlink()
        body = await reload(client)
        assert (body["added"], body["replaced"], body["removed"]) == ([], [], ["new"])
        assert (await client.get("/sample", params={"model": "new"})).status_code == 404
        assert [m["name"] for m in (await client.get("/models")).json()["models"]] == ["m"]
        assert "ctm_models_loaded 1.0" in (await client.get("/metrics")).text

        # Touching a file without changing its bytes keeps the version.
        os.utime(folder / "m.safetensors", ns=(1, 1))
        body = await reload(client)
        assert body["unchanged"] == ["m"] and body["models"]["m"] == sha(v2)


async def test_a_bad_replacement_leaves_the_previous_version_serving(
    tmp_path: Path, make_checkpoint: Any, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    v1, _ = versions(tmp_path, make_checkpoint)
    atomic_write_bytes(folder / "m.safetensors", v1)
    async with serve(folder, admin_token=TOKEN, default_model="m") as client:
        with caplog.at_level("INFO", logger="service"):
            (folder / "m.safetensors").write_bytes(v1[: len(v1) // 2])  # a copy caught half-way
            (folder / "junk.safetensors").write_bytes(b"PK\x03\x04 a zip file")
            body = await reload(client)
        assert body["models"] == {"m": sha(v1)}
        rejected = {r["file_name"]: r for r in body["rejected"]}
        assert rejected["m.safetensors"]["serving_sha256"] == sha(v1)
        assert "not a valid safetensors file" in rejected["m.safetensors"]["reason"]
        assert rejected["junk.safetensors"]["serving_sha256"] is None
        assert str(folder) not in str(body)  # reasons name no paths
        listed = (await client.get("/models")).json()
        assert listed["rejected"] == body["rejected"]
        assert [m["sha256"] for m in listed["models"]] == [sha(v1)]
        assert (await client.get("/sample")).json()["model_sha256"] == sha(v1)
        logged = [r.getMessage() for r in caplog.records if "checkpoint rejected" in r.getMessage()]
        assert any("file=m.safetensors" in m and f"serving_previous={sha(v1)[:12]}" in m for m in logged)

        # The same bad bytes are not read or logged again; fixed bytes are picked up.
        caplog.clear()
        with caplog.at_level("INFO", logger="service"):
            assert len((await reload(client))["rejected"]) == 2
        assert not [r for r in caplog.records if "checkpoint rejected" in r.getMessage()]
        atomic_write_bytes(folder / "m.safetensors", v1)
        body = await reload(client)
        assert [r["file_name"] for r in body["rejected"]] == ["junk.safetensors"]
        assert body["unchanged"] == ["m"]


async def test_a_request_runs_entirely_on_the_version_it_started_with(
    tmp_path: Path, make_checkpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    v1, v2 = versions(tmp_path, make_checkpoint)
    atomic_write_bytes(folder / "m.safetensors", v1)
    expected = {sha(v1): expected_samples(folder / "m.safetensors", SWAP_PARAMS)}
    (tmp_path / "v2.safetensors").write_bytes(v2)
    expected[sha(v2)] = expected_samples(tmp_path / "v2.safetensors", SWAP_PARAMS)
    assert not np.array_equal(expected[sha(v1)], expected[sha(v2)])

    # The first request is held inside its sampling job while the file is replaced and reloaded.
    started, release = threading.Event(), threading.Event()
    real_run_job = service.inference.run_job

    def held_run_job(job: SamplingJob, device: torch.device, **kwargs: Any) -> Any:
        if job.seed == SWAP_PARAMS["seed"] and not started.is_set():
            started.set()
            assert release.wait(10)
        return real_run_job(job, device, **kwargs)

    monkeypatch.setattr(service.inference, "run_job", held_run_job)
    # Held, the job must wait in a pool thread: run inline (a small batch) it would hold the loop.
    monkeypatch.setattr(service.inference, "INLINE_MAX_ROW_EVALS", 0)
    async with serve(folder, admin_token=TOKEN) as client:
        first = asyncio.create_task(client.get("/sample", params=SWAP_PARAMS))
        assert await asyncio.to_thread(started.wait, 10)
        atomic_write_bytes(folder / "m.safetensors", v2)
        assert (await reload(client))["replaced"] == ["m"]
        second = (await client.get("/sample", params=SWAP_PARAMS)).json()
        release.set()
        first_body = (await first).json()
    assert first_body["model_sha256"] == sha(v1)
    assert same_samples(first_body, expected[sha(v1)])
    assert second["model_sha256"] == sha(v2)
    assert same_samples(second, expected[sha(v2)])


async def test_concurrent_requests_during_repeated_reloads(tmp_path: Path, make_checkpoint: Any) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    v1, v2 = versions(tmp_path, make_checkpoint)
    (tmp_path / "a.safetensors").write_bytes(v1)
    (tmp_path / "b.safetensors").write_bytes(v2)
    expected = {
        sha(v1): expected_samples(tmp_path / "a.safetensors", SWAP_PARAMS),
        sha(v2): expected_samples(tmp_path / "b.safetensors", SWAP_PARAMS),
    }
    atomic_write_bytes(folder / "m.safetensors", v1)
    seen: list[str] = []
    reloaded = asyncio.Event()
    async with serve(folder, admin_token=TOKEN) as client:

        async def requests() -> None:
            # Until the reloads are over: small requests run on the event loop, and 15 each could
            # all be answered before the first reload ends.
            made = 0
            while made < 15 or not reloaded.is_set():
                made += 1
                response = await client.get("/sample", params=SWAP_PARAMS)
                assert response.status_code == 200, response.text
                body = response.json()
                assert same_samples(body, expected[body["model_sha256"]])
                seen.append(body["model_sha256"])

        async def reloads() -> None:
            for i in range(12):
                atomic_write_bytes(folder / "m.safetensors", (v2, v1)[i % 2])
                assert (await reload(client))["models"]["m"] == sha((v2, v1)[i % 2])
                await asyncio.sleep(0.005)
            reloaded.set()

        await asyncio.gather(reloads(), *(requests() for _ in range(8)))
    assert len(seen) >= 120
    assert set(seen) == set(expected)  # both versions served, each request consistent


async def test_directory_poll_picks_up_changes(tmp_path: Path, make_checkpoint: Any) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    v1, v2 = versions(tmp_path, make_checkpoint)
    atomic_write_bytes(folder / "m.safetensors", v1)

    async def until(client: httpx.AsyncClient, predicate: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = (await client.get("/models")).json()
            if predicate(body):
                return body
            await asyncio.sleep(0.02)
        pytest.fail(f"the poller did not pick the change up: {body}")

    async with serve(folder, reload_poll_s=0.05) as client:  # no admin token needed to poll
        assert (await client.post("/admin/reload")).status_code == 404
        atomic_write_bytes(folder / "m.safetensors", v2)
        await until(client, lambda b: [m["sha256"] for m in b["models"]] == [sha(v2)])
        make_checkpoint(folder / "extra.safetensors", noise=NOISE, seed=5)
        await until(client, lambda b: [m["name"] for m in b["models"]] == ["extra", "m"])
        (folder / "extra.safetensors").unlink()
        (folder / "bad.safetensors").write_bytes(b"\x00" * 16)
        body = await until(client, lambda b: len(b["models"]) == 1 and b["rejected"])
        assert body["rejected"][0]["file_name"] == "bad.safetensors"


async def test_admin_endpoint_needs_the_token(tmp_path: Path, checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as client:
        response = await client.post("/admin/reload", headers=ADMIN)
        assert response.status_code == 404  # CTM_ADMIN_TOKEN unset: disabled
        assert "/admin/reload" not in (await client.get("/openapi.json")).json()["paths"]
    async with serve(checkpoint_dir, admin_token=TOKEN) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"X-API-Key": TOKEN},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            response = await client.post("/admin/reload", headers=headers)
            assert response.status_code == 401, headers
            assert "admin token" in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"
        assert (
            await client.post("/admin/reload", headers={"authorization": f"bearer {TOKEN}"})
        ).status_code == 200
        assert (await client.get("/admin/reload", headers=ADMIN)).status_code == 405
        operation = (await client.get("/openapi.json")).json()["paths"]["/admin/reload"]["post"]
        assert {"200", "401"} <= set(operation["responses"])
        assert operation["security"] == [{"adminToken": []}]


# ---- untrusted files in the checkpoint directory ----------------------------------------------------


async def test_links_and_odd_entries_are_refused(tmp_path: Path, checkpoint_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    good = checkpoint_dir / "two_gmm_1D.safetensors"
    (outside / "secret.safetensors").write_bytes(good.read_bytes())  # a valid checkpoint, but elsewhere
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "good.safetensors").write_bytes(good.read_bytes())
    (folder / "inside_link.safetensors").symlink_to(folder / "good.safetensors")
    (folder / "outside_link.safetensors").symlink_to(outside / "secret.safetensors")
    (folder / "relative_escape.safetensors").symlink_to(Path("..") / "outside" / "secret.safetensors")
    (folder / "to_etc.safetensors").symlink_to("/etc/passwd")
    (folder / "broken_link.safetensors").symlink_to(folder / "gone.safetensors")
    (folder / "dir.safetensors").mkdir()
    (folder / "dir_link.safetensors").symlink_to(outside)
    os.mkfifo(folder / "fifo.safetensors")  # would block a reader forever
    (folder / "null.safetensors").symlink_to("/dev/null")
    async with serve(folder, default_model="good") as client:
        body = (await client.get("/models")).json()
    assert [m["name"] for m in body["models"]] == ["good", "inside_link"]
    reasons = {r["file_name"]: r["reason"] for r in body["rejected"]}
    outside_reason = "a symbolic link to a file outside the checkpoint directory: not read"
    assert reasons == {
        "broken_link.safetensors": "broken symbolic link",
        "dir.safetensors": "not a regular file",
        "dir_link.safetensors": outside_reason,
        "fifo.safetensors": "not a regular file",
        "null.safetensors": outside_reason,
        "outside_link.safetensors": outside_reason,
        "relative_escape.safetensors": outside_reason,
        "to_etc.safetensors": outside_reason,
    }


async def test_checkpoint_directory_reached_through_a_link(tmp_path: Path, checkpoint_dir: Path) -> None:
    # The directory itself may be a link (a mounted volume): its files are inside it.
    link = tmp_path / "mounted"
    link.symlink_to(checkpoint_dir)
    async with serve(link) as client:
        assert (await client.get("/readyz")).json()["models"] == ["gauss_1D", "two_gmm_1D"]


# ---- concurrency ---------------------------------------------------------------------------------------


def test_figures_render_safely_from_several_threads(checkpoint_dir: Path) -> None:
    # matplotlib's mathtext parser (log-axis tick labels) is not thread-safe; /plot.png under load
    # failed with 500 until rendering was serialised (found by benchmarks/load.py).
    from service.api.routes.explorer import render_result

    model = load_model(checkpoint_dir / "two_gmm_1D.safetensors", torch.device("cpu"))
    job = SamplingJob(model=model, sampler="multistep", steps=3, n=200, seed=1, noise="random", gamma=0.5)
    result = run_job(job, torch.device("cpu"))
    errors: list[str] = []

    def render() -> None:
        for _ in range(3):
            try:
                assert render_result(result, "paths").startswith(b"\x89PNG")
            except Exception as exc:
                errors.append(repr(exc)[:200])

    threads = [threading.Thread(target=render) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# ---- request time limit -------------------------------------------------------------------------------


async def test_a_slow_request_gets_503_and_queued_jobs_are_cancelled(
    checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_run_job = service.inference.run_job
    started: list[int] = []

    def slow_run_job(job: SamplingJob, device: torch.device, **kwargs: Any) -> Any:
        if job.n == 7:
            started.append(job.seed)
            time.sleep(1.0)
        return real_run_job(job, device, **kwargs)

    monkeypatch.setattr(service.inference, "run_job", slow_run_job)
    # The slow job must hold the pool's thread, not the event loop (where small batches run).
    monkeypatch.setattr(service.inference, "INLINE_MAX_ROW_EVALS", 0)
    async with serve(checkpoint_dir, request_timeout_s=0.3, inference_threads=1) as client:
        start = time.perf_counter()
        with caplog.at_level("WARNING", logger="service"):
            first = asyncio.ensure_future(client.get("/sample", params={"n": 7, "seed": 0}))
            while not started:  # running alone in the only thread; the next two queue behind it
                await asyncio.sleep(0.005)
            queued = [client.get("/sample", params={"n": 7, "seed": seed}) for seed in (1, 2)]
            responses = await asyncio.gather(first, *queued)
        assert time.perf_counter() - start < 0.9
        for response in responses:
            assert response.status_code == 503
            assert "CTM_REQUEST_TIMEOUT_S" in response.json()["detail"]
            assert response.headers["retry-after"] == "1"
        assert sum("request timed out path=/sample" in r.getMessage() for r in caplog.records) == 3
        await asyncio.sleep(1.2)
        assert len(started) == 1  # the two queued jobs were cancelled, never run
        # The worker is free again; probes never time out; the 503s were counted.
        assert (await client.get("/sample", params={"n": 5})).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'endpoint="/sample",model="two_gmm_1D",sampler="onestep",status="503"} 3.0' in metrics


async def test_openapi_declares_503_and_no_timeout_when_disabled(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    for path, item in paths.items():
        for operation in item.values():
            if path in ("/healthz", "/readyz"):
                assert "503" not in operation["responses"] or path == "/readyz"
            else:
                assert operation["responses"]["503"]["description"].startswith("The request took longer")
    async with serve(checkpoint_dir, request_timeout_s=0) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert "503" not in paths["/sample"]["get"]["responses"]


# ---- access: API key, CORS, secrets -------------------------------------------------------------------


async def test_api_key_guards_everything_but_the_probes(checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, api_key=API_KEY) as client:
        for path in ("/healthz", "/readyz"):
            assert (await client.get(path)).status_code == 200
        for path in ("/sample", "/trajectory", "/models", "/models/gauss_1D", "/metrics", "/openapi.json",
                     "/docs", "/", "/evaluate", "/no-such-path", "/healthz/", "/HEALTHZ"):  # fmt: skip
            response = await client.get(path)
            assert response.status_code == 401, path
            assert "API key" in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"
        for headers in (
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {API_KEY[:-1]}"},
            {"Authorization": f"Bearer {API_KEY}0"},
            {"Authorization": f"Token {API_KEY}"},
            {"X-API-Key": ""},
            {"X-API-Key": API_KEY.upper()},
            {"Cookie": f"api_key={API_KEY}"},
        ):
            assert (await client.get("/models", headers=headers)).status_code == 401, headers
        assert (await client.get("/models", params={"api_key": API_KEY})).status_code == 401  # not in URLs
        for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}):
            response = await client.get("/sample", params={"n": 3}, headers=headers)
            assert response.status_code == 200
        schema = (await client.get("/openapi.json", headers={"X-API-Key": API_KEY})).json()
        metrics = (await client.get("/metrics", headers={"X-API-Key": API_KEY})).text
    assert set(schema["components"]["securitySchemes"]) == {"apiKeyBearer", "apiKeyHeader"}
    assert schema["paths"]["/sample"]["get"]["responses"]["401"]
    assert schema["paths"]["/sample"]["get"]["security"] == [{"apiKeyBearer": []}, {"apiKeyHeader": []}]
    for probe in ("/healthz", "/readyz"):
        assert "401" not in schema["paths"][probe]["get"]["responses"]
        assert "security" not in schema["paths"][probe]["get"]
    assert 'endpoint="unmatched",model="",sampler="",status="401"' in metrics


async def test_api_key_is_compared_in_constant_time(
    checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    async with serve(checkpoint_dir, api_key=API_KEY) as client:
        await client.get("/models", headers={"X-API-Key": "x"})
        await client.get("/models", headers={"Authorization": "Bearer " + "y" * 5000})
        await client.get("/models")
    # Every check compares two SHA-256 digests: equal lengths whatever was sent (or nothing).
    assert compared and set(compared) == {(32, 32)}


async def test_api_key_and_admin_token_together(tmp_path: Path, checkpoint_dir: Path) -> None:
    async with serve(checkpoint_dir, api_key=API_KEY, admin_token=TOKEN) as client:
        assert (await client.post("/admin/reload", headers=ADMIN)).status_code == 401  # no API key
        assert (await client.post("/admin/reload", headers={"X-API-Key": API_KEY})).status_code == 401
        response = await client.post("/admin/reload", headers=ADMIN | {"X-API-Key": API_KEY})
        assert response.status_code == 200
        schema = (await client.get("/openapi.json", headers={"X-API-Key": API_KEY})).json()
    assert schema["paths"]["/admin/reload"]["post"]["security"] == [{"adminToken": [], "apiKeyHeader": []}]


async def test_cors_is_off_by_default_and_configurable(checkpoint_dir: Path) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = origin | {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-api-key",
    }
    async with serve(checkpoint_dir) as client:
        response = await client.get("/models", headers=origin)
        assert "access-control-allow-origin" not in response.headers
        assert (await client.options("/models", headers=preflight)).status_code == 405
    async with serve(checkpoint_dir, cors_origins=["https://app.example"], api_key=API_KEY) as client:
        response = await client.options("/models", headers=preflight)  # no key needed for a preflight
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        response = await client.get("/models", headers=origin | {"X-API-Key": API_KEY})
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        response = await client.get(
            "/models", headers={"Origin": "https://evil.example", "X-API-Key": API_KEY}
        )
        assert "access-control-allow-origin" not in response.headers
        response = await client.get("/models", headers=origin)  # a 401 still tells the browser why
        assert response.status_code == 401
        assert response.headers["access-control-allow-origin"] == "https://app.example"


def test_settings_keep_secrets_out_of_reprs_and_read_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTM_API_KEY", API_KEY)
    monkeypatch.setenv("CTM_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("CTM_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = Settings()
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert API_KEY not in text and TOKEN not in text
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    env = settings.to_env()  # for worker processes
    assert (env["CTM_API_KEY"], env["CTM_ADMIN_TOKEN"]) == (API_KEY, TOKEN)
    monkeypatch.setenv("CTM_API_KEY", "")
    assert Settings().api_key is None  # an empty variable is unset, not an empty key


def test_the_image_runs_as_a_non_root_user() -> None:
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    final_stage = dockerfile.split("\nFROM ")[-1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, flags=re.MULTILINE)
    assert users, "the final stage sets no USER: it would run as root"
    assert users[-1] not in ("root", "0", "0:0")
    assert re.search(rf"useradd\b[^\n]*\b{re.escape(users[-1])}\b", dockerfile)
