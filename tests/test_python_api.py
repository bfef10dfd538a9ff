"""The Python API (`ctm_core.load`) and the offline CLI (`python -m ctm_core.sample`) give the
service's numbers for the same request, bit for bit, and refuse what the service refuses."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from app_client import serve

import ctm_core
from ctm_core.sample import main as sample_main

pytestmark = pytest.mark.anyio
CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
MODEL = "two_gmm_1D"
REQUESTS = [
    {"sampler": "onestep", "n": 33, "seed": 7},
    {"sampler": "multistep", "n": 40, "seed": 2**32 + 3, "noise": "quantile"},
    {"sampler": "multistep", "n": 17, "seed": 1, "sigmas": [10.0, 3.0, 0.5, 0.002]},
    {"sampler": "gamma", "steps": 3, "n": 25, "seed": 11, "gamma": 0.3},
    {"sampler": "gamma", "n": 25, "seed": 11},
    {"sampler": "euler", "steps": 6, "n": 9, "seed": 5},
    {"sampler": "heun", "steps": 5, "n": 9, "seed": 5},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def model() -> ctm_core.Model:
    return ctm_core.load(CHECKPOINTS / f"{MODEL}.safetensors")


def _query(request: dict) -> dict:
    params = {key: value for key, value in request.items() if key != "sigmas"}
    if "sigmas" in request:
        params["sigmas"] = ",".join(repr(level) for level in request["sigmas"])
    return {"model": MODEL, **params}


@pytest.fixture(scope="module")
def one_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder serving only MODEL: the app starts in a fraction of the time of all eight."""
    folder = tmp_path_factory.mktemp("one_model")
    (folder / f"{MODEL}.safetensors").write_bytes((CHECKPOINTS / f"{MODEL}.safetensors").read_bytes())
    return folder


async def test_the_api_gives_the_services_samples_paths_and_densities(
    model: ctm_core.Model, one_model_dir: Path
) -> None:
    x = [-2.5, -1.0, 0.0, 0.3, 1.7, 40.0]
    async with serve(one_model_dir) as client:
        for request in REQUESTS:
            sampled = await client.get("/sample", params=_query(request))
            traced = await client.get("/trajectory", params=_query(request))
            assert sampled.status_code == 200, sampled.text
            assert traced.status_code == 200, traced.text
            served = np.asarray(sampled.json()["samples"], dtype=np.float32)
            mine = model.sample(**request)
            assert mine.dtype == np.float32 and mine.shape == (request["n"],)
            np.testing.assert_array_equal(mine, served, err_msg=str(request))
            path = model.trajectory(**request)
            body = traced.json()
            np.testing.assert_array_equal(path.paths, np.asarray(body["paths"], dtype=np.float32))
            np.testing.assert_array_equal(path.sigmas, np.asarray(body["sigmas"]))
            assert path.nfe == body["nfe"] == sampled.json()["nfe"]
        for density in ("onestep", "ode"):
            answer = await client.post("/logprob", json={"model": MODEL, "x": x, "sampler": density})
            assert answer.status_code == 200, answer.text
            served = np.array([-np.inf if v is None else v for v in answer.json()["logprob"]])
            np.testing.assert_array_equal(model.logprob(x, density), served)


def test_defaults_and_refusals_are_the_services(model: ctm_core.Model) -> None:
    assert model.trajectory(3, seed=0).states.shape == (4 + 1, 3)  # multistep's 4 default steps
    assert model.trajectory(3, "heun", seed=0).nfe == 2 * 64 - 1
    a, b = model.sample(5), model.sample(5)  # no seed: one is drawn per call
    assert not np.array_equal(a, b)
    for bad, match in [
        ({"sampler": "onestep", "steps": 2}, "exactly 1 step"),
        ({"sampler": "multistep", "gamma": 0.5}, "gamma applies to sampler=gamma only"),
        ({"sampler": "multistep", "steps": 2, "sigmas": [10.0, 0.002]}, "either steps or sigmas"),
        ({"sampler": "multistep", "sigmas": [9.0, 0.002]}, "sigma_max = 10"),
        ({"sampler": "nope"}, "unknown sampler"),
        ({"sampler": "gamma", "gamma": 1.5}, r"gamma must be in \[0, 1\]"),
        ({"n": 0}, "n must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.sample(**{"n": 5, **bad})
    with pytest.raises(ValueError, match="finite"):
        model.logprob([0.0, float("nan")])
    with pytest.raises(
        ctm_core.checkpoint.CheckpointError if hasattr(ctm_core, "checkpoint") else ValueError
    ):
        ctm_core.load(CHECKPOINTS / "missing.safetensors")


def test_the_cli_writes_the_apis_numbers(model: ctm_core.Model, tmp_path: Path) -> None:
    checkpoint = str(CHECKPOINTS / f"{MODEL}.safetensors")
    common = ["--n", "50", "--sampler", "gamma", "--steps", "3", "--seed", "9", "--quiet"]
    expected = model.sample(50, "gamma", 3, seed=9)
    for suffix in (".csv", ".npy", ".json"):
        out = tmp_path / f"samples{suffix}"
        assert sample_main([checkpoint, *common, "--out", str(out)]) == 0
        if suffix == ".csv":
            lines = out.read_text().splitlines()
            assert lines[0] == "x" and len(lines) == 51
            got = np.array(lines[1:], dtype=np.float32)
        elif suffix == ".npy":
            got = np.load(out, allow_pickle=False)
        else:
            answer = json.loads(out.read_text())
            assert answer["seed"] == 9 and answer["nfe"] == 3 and answer["model"] == MODEL
            got = np.asarray(answer["samples"], dtype=np.float32)
        np.testing.assert_array_equal(got, expected)
    out = tmp_path / "paths.csv"
    assert (
        sample_main([checkpoint, "--n", "4", "--seed", "2", "--trajectory", "--out", str(out), "--quiet"])
        == 0
    )
    lines = out.read_text().splitlines()
    path = model.trajectory(4, seed=2)
    assert lines[0].split(",") == [f"sigma={level:.9g}" for level in path.sigmas]
    np.testing.assert_array_equal(np.loadtxt(out, delimiter=",", skiprows=1, dtype=np.float32), path.paths)


def test_the_cli_explains_bad_input_and_keeps_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = str(CHECKPOINTS / f"{MODEL}.safetensors")
    kept = tmp_path / "kept.csv"
    kept.write_text("precious")
    for argv, message in [
        ([checkpoint, "--sampler", "onestep", "--steps", "3", "--out", str(kept)], "exactly 1 step"),
        ([checkpoint, "--sigmas", "10,x", "--out", str(kept)], "--sigmas"),
        ([checkpoint, "--out", str(tmp_path / "a.txt")], "unknown format"),
        ([checkpoint, "--out", str(tmp_path)], "is a folder"),
    ]:
        assert sample_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert kept.read_text() == "precious"
    # And as a process: one line and exit code 2, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "ctm_core.sample", str(tmp_path / "no.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_numbers_do_not_depend_on_the_callers_threads() -> None:
    # The service samples with single-threaded ops; a user's process may have any thread count,
    # and threaded BLAS rounds differently: the runtime must not let that through.
    before = torch.get_num_threads()
    try:
        answers = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            fresh = ctm_core.load(CHECKPOINTS / f"{MODEL}.safetensors")  # its folds made on these threads
            answers.append(fresh.sample(3000, "multistep", seed=4))
        np.testing.assert_array_equal(answers[0], answers[1])
    finally:
        torch.set_num_threads(before)
