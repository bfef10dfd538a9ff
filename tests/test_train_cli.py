"""`python -m ctm_core.train`: errors in one line, reproducible checkpoints, interrupt and resume."""

import asyncio
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from argparse import SUPPRESS
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from app_client import serve
from scipy import stats
from tiny_training import TINY

from ctm_core.bandwidth import cv_bandwidth
from ctm_core.checkpoint import Checkpoint, Metrics, TaskInfo, TrainingState, load_checkpoint
from ctm_core.data import split_holdout
from ctm_core.evaluation import DEFAULT_SPECS
from ctm_core.machine import usable_cpus
from ctm_core.network import CTMNetwork, MonotoneNetwork
from ctm_core.tasks import get_task
from ctm_core.train import build_parser, main
from service.__main__ import build_parser as service_parser
from service.api.routes.likelihood import model_log_prob
from service.config import Settings
from service.registry import load_model

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--teacher-steps", "60", "--ctm-steps", "40", *TINY]


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """main() sets torch's thread count (--threads); give the rest of the session its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run main, expect exit code 2 and exactly one 'error:' line on stderr; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _data_file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# ---- bad input: exit code 2, one line --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", "", "file is empty"),
        ("words.txt", "1.0\n2.0\nthree\n", "line 3: 'three' is not a number"),
        ("words.csv", "value\n1.0\nabc\n", "line 3: 'abc' is not a number"),
        ("nan.txt", "1.0\nnan\n2.0\n", "NaN or infinite"),
        ("inf.csv", "1.0\n2.0\ninf\n-inf\n", "2 NaN or infinite"),
        ("one.txt", "4.2\n", "needs at least 2 values, found 1"),
        ("two_columns.csv", "1,2\n3,4\n", "expected one numeric column"),
        ("data.json", "[1, 2, 3]", "unsupported extension '.json'"),
        ("data.npz", b"PK\x03\x04", "unsupported extension '.npz'"),
        ("fake.npy", b"1.0\n2.0\n", "not a valid .npy file"),
        ("binary.txt", b"\xff\xfe\x00\x01\x02", "not a UTF-8 text file"),
    ],
)
def test_bad_data_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str | bytes, expected: str
) -> None:
    path = _data_file(tmp_path, name, content)
    out = tmp_path / "out.safetensors"
    line = _usage_error(capsys, ["--data", str(path), "--out", str(out), *SHORT])
    assert expected in line and str(path) in line
    assert not out.exists()


def test_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage_error(capsys, ["--data", str(tmp_path / "absent.csv"), *SHORT])
    assert "file not found" in line


def test_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory" in _usage_error(capsys, ["--data", str(tmp_path / "dir.csv"), *SHORT])


def test_two_dimensional_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "matrix.npy"
    np.save(path, np.zeros((10, 3)))
    assert "array of shape (10, 3)" in _usage_error(capsys, ["--data", str(path), *SHORT])


def test_object_npy_is_refused_without_unpickling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([1.0, "x", None], dtype=object), allow_pickle=True)  # hostile file, test only
    assert "Python objects" in _usage_error(capsys, ["--data", str(path), *SHORT])


def test_holdout_leaving_too_little_to_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _data_file(tmp_path, "three.txt", "1\n2\n3\n")
    assert "leaves 1 for training" in _usage_error(capsys, ["--data", str(path), "--holdout", "0.5", *SHORT])


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("bogus=1", "unknown field 'bogus'"),
        ("network.colour=3", "unknown field 'network.colour'"),
        ("network.width.inner=3", "unknown field 'network.width.inner'"),
        ("network.width=0", "invalid setting network.width"),
        ("network.width=wide", "invalid setting network.width"),
        ("ctm.end_probability=1.5", "invalid setting ctm.end_probability"),
        ("noise.sigma_min=20", "invalid setting noise"),
        ("teacher=5", "invalid setting teacher"),
        ("network.width", "--set expects KEY=VALUE"),
        ('network.init="xavier"', "invalid setting network.init"),
        # The landing level is gone (the jump samplers follow noise.jump_schedule): an unknown field.
        ("noise.landing_ratio=0.013", "unknown field 'noise.landing_ratio'"),
        ('noise.jump_schedule="cosine"', "invalid setting noise.jump_schedule"),
        ('network.kind="resnet"', "invalid setting network.kind"),
        ("network.units=0", "invalid setting network.units"),
        ("ctm.end_weight=-1", "invalid setting ctm.end_weight"),
        ("ctm.pool_substeps=0", "invalid setting ctm.pool_substeps"),
    ],
)
def test_bad_set(capsys: pytest.CaptureFixture[str], setting: str, expected: str) -> None:
    assert expected in _usage_error(capsys, [*SHORT, "--set", setting])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--holdout", "1.5"], "invalid setting holdout"),
        (["--holdout", "-0.1"], "invalid setting holdout"),
        (["--teacher-steps", "-1"], "invalid setting teacher.steps"),
        (["--batch-size", "0"], "invalid setting teacher.batch_size"),
        (["--lr", "0"], "invalid setting teacher.lr"),
        (["--seed", "-3"], "invalid setting seed"),
        (["--save-every", "-1"], "--save-every"),
        (["--eval-n", "-5"], "--eval-n"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_bad_flag_values(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    assert expected in _usage_error(capsys, [*SHORT, *argv])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert "no CUDA device" in _usage_error(capsys, [*SHORT, "--device", "cuda"])


def test_unknown_task_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--task", "no_such_task"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_existing_out_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "precious.safetensors"
    out.write_bytes(b"do not touch")
    line = _usage_error(capsys, [*SHORT, "--out", str(out)])
    assert "--overwrite" in line and str(out) in line
    assert out.read_bytes() == b"do not touch"


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], finished_runs: list[Path]) -> None:
    out = tmp_path / "r.safetensors"
    line = _usage_error(capsys, [*SHORT, "--out", str(out), "--resume", str(tmp_path / "absent.safetensors")])
    assert "no such file" in line
    junk = _data_file(tmp_path, "junk.safetensors", b"\x00" * 64)
    assert "junk.safetensors" in _usage_error(capsys, [*SHORT, "--out", str(out), "--resume", str(junk)])
    finished = finished_runs[0]
    assert "nothing to resume" in _usage_error(
        capsys, [*SHORT, "--eval-n", "500", "--out", str(out), "--resume", str(finished)]
    )
    line = _usage_error(capsys, [*SHORT, "--seed", "1", "--out", str(out), "--resume", str(finished)])
    assert "other settings" in line
    assert not out.exists()


# ---- a tiny run, twice -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two identical runs (same seed, same flags) to two files."""
    folder = tmp_path_factory.mktemp("runs")
    before = torch.get_num_threads()
    paths = []
    for name in ("a", "b"):
        out = folder / f"{name}.safetensors"
        assert main([*SHORT, "--eval-n", "500", "--out", str(out)]) == 0
        paths.append(out)
    torch.set_num_threads(before)
    return paths


def test_tiny_run_writes_a_complete_checkpoint(finished_runs: list[Path]) -> None:
    ckpt = load_checkpoint(finished_runs[0])
    meta = ckpt.metadata
    task = get_task("two_gmm_1D")
    assert meta.task == TaskInfo(name="two_gmm_1D", description=task.description, kind=task.kind)
    training = meta.training
    assert training is not None
    assert training.mode == "distill" and training.seed == 0 and training.task == "two_gmm_1D"
    assert training.teacher.steps == 60 and training.ctm.steps == 40
    assert training.teacher.batch_size == training.ctm.batch_size == 64
    assert meta.network.width == 16 and training.ctm.grid_points == 12
    assert meta.network.kind == "monotone" and meta.network.units == 16
    # The prior is the marginal at σ_max: N(μ, σ_max² + σ_d²).
    assert meta.noise.prior_std == pytest.approx(math.hypot(meta.noise.sigma_max, task.std), rel=1e-9)
    assert training.state == TrainingState(phase="done", step=40)
    # σ_data was measured from the task and is what the model was built with.
    assert meta.noise.sigma_data == pytest.approx(task.std)
    assert ckpt.student.sigma_data == pytest.approx(task.std)
    assert ckpt.teacher is not None
    assert ckpt.state == {}, "a finished run carries no resume state"

    rows = meta.metrics.rows
    assert rows is not None
    assert [r["label"] for r in rows] == [spec.label for spec in DEFAULT_SPECS]
    # Heun's n steps cost 2n − 1 evaluations; the exact flow (a closed-form map) costs none.
    assert [r["nfe"] for r in rows] == [1, 2, 4, 4, 35, 35, 511, 0]
    for row in rows:
        assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ("qW1", "W1", "KS"))
    exact = rows[-1]
    assert exact["label"] == "exact flow (the limit)"
    # Quantile latents mapped by the exact flow land on the task's own quantiles, up to the blur of
    # σ_min = 0.002 (a shift of order σ_min²·score, ~3e-5 here): far below any trained model's qW1.
    assert exact["qW1"] < 2e-4


def test_same_seed_same_checkpoint(finished_runs: list[Path]) -> None:
    a, b = (load_checkpoint(p) for p in finished_runs)
    for model_a, model_b in ((a.student, b.student), (a.teacher, b.teacher)):
        sa, sb = model_a.state_dict(), model_b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.metadata.model_copy(update={"created_at": ""}) == b.metadata.model_copy(
        update={"created_at": ""}
    )

    def normalised(ckpt: Checkpoint) -> bytes:
        stamp = json.dumps(ckpt.metadata.created_at).encode()
        # The metadata is a JSON string inside the JSON header, so its quotes are escaped.
        escaped = stamp.replace(b'"', b'\\"')
        data = ckpt.path.read_bytes()
        assert data.count(escaped) == 1
        return data.replace(escaped, b'\\"' + b"T" * (len(stamp) - 2) + b'\\"')

    assert normalised(a) == normalised(b)


def test_another_seed_gives_other_weights(tmp_path: Path, finished_runs: list[Path]) -> None:
    out = tmp_path / "seed1.safetensors"
    assert main([*SHORT, "--eval-n", "0", "--seed", "1", "--out", str(out)]) == 0
    a, b = load_checkpoint(finished_runs[0]), load_checkpoint(out)
    assert not torch.equal(
        a.student.state_dict()["net.trunk.0.weight"], b.student.state_dict()["net.trunk.0.weight"]
    )
    assert b.metadata.metrics == Metrics(rows=[])  # --eval-n 0 skips the table


def test_the_last_line_is_a_command_that_serves_what_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "my runs" / "mine.safetensors"
    assert main([*SHORT, "--eval-n", "0", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("serve it: python -m service ")
    flags = service_parser().parse_args(shlex.split(last.removeprefix("serve it: python -m service ")))
    settings = Settings(**{k: v for k, v in vars(flags).items() if v is not None})

    async def plain_sample() -> dict[str, object]:
        async with serve(settings.checkpoint_dir, default_model=settings.default_model) as client:
            return (await client.get("/sample", params={"n": 2})).json()

    assert asyncio.run(plain_sample())["model"] == "mine"


def test_overwrite_replaces_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    assert main([*SHORT, "--eval-n", "0", "--out", str(out), "--overwrite"]) == 0
    training = load_checkpoint(out).metadata.training
    assert training is not None and training.state.phase == "done"
    assert f"saved {out}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


def test_user_data_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-1.0, 0.3, 200), rng.normal(2.0, 0.5, 200)])
    path = tmp_path / "mydata.csv"
    path.write_text("value\n" + "\n".join(f"{v:.6f}" for v in values) + "\n")
    out = tmp_path / "mydata.safetensors"
    argv = ["--data", str(path), "--holdout", "0.25", "--eval-n", "500", "--out", str(out), *SHORT]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "W1 hold" in printed
    assert "(onestep density)" in printed  # a monotone model: the one-step sampler's own density

    meta = load_checkpoint(out).metadata
    task = meta.task
    assert task.kind == "data" and task.name == "mydata" and task.file == "mydata.csv"
    assert (task.n_train, task.n_holdout) == (300, 100)
    assert task.statistics is not None and task.statistics.n == 400
    assert task.statistics.mean == pytest.approx(float(np.round(values, 6).mean()), abs=1e-9)
    assert meta.training is not None and meta.training.holdout == 0.25
    assert meta.training.data == str(path) and meta.training.task is None
    train, holdout = split_holdout(np.round(values, 6), 0.25, 0)
    assert meta.noise.sigma_data == pytest.approx(float(train.std()), rel=1e-9)
    # The flow stops at the training values' cross-validated KDE bandwidth: for modes of sd 0.3
    # and 0.5 with 150 values each, near the AMISE rule (4/3n)^(1/5)·sd ≈ 0.12–0.19, not 0.002.
    assert meta.noise.sigma_min == cv_bandwidth(train, 0)
    assert 0.06 < meta.noise.sigma_min < 0.3

    # The held-out likelihood is the density the service answers by default: /logprob's onestep.
    likelihood = meta.metrics.heldout_log_likelihood
    assert likelihood is not None and likelihood["density"] == "onestep"
    served = model_log_prob(load_model(out, torch.device("cpu")), holdout.tolist(), "onestep")
    assert np.isfinite(served).all()
    assert likelihood["model"] == pytest.approx(float(served.mean()), rel=1e-6, abs=1e-6)
    # And the baseline: a Scott's-rule Gaussian KDE of the training split, by scipy.
    kde = stats.gaussian_kde(train, bw_method="scott")
    assert likelihood["kde"] == pytest.approx(float(kde.logpdf(holdout).mean()), rel=1e-9)

    rows = meta.metrics.rows
    assert rows is not None
    assert [r["label"] for r in rows] == [s.label for s in DEFAULT_SPECS if s.network != "exact"]
    for row in rows:
        assert math.isfinite(row["W1_holdout"]) and row["W1_holdout"] > 0


def test_user_data_keeps_the_configured_sigma_min_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("\n".join(f"{v:.4f}" for v in np.random.default_rng(1).normal(0, 1, 200)) + "\n")
    out = tmp_path / "d.safetensors"
    argv = ["--data", str(path), "--eval-n", "0", "--out", str(out), *SHORT]
    assert main([*argv, "--set", "data_sigma_min=noise", "--set", "noise.sigma_min=0.01"]) == 0
    assert load_checkpoint(out).noise.sigma_min == 0.01


def test_help_documents_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ctm_core.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("usage: python -m ctm_core.train")
    flags = []
    for action in build_parser()._actions:
        assert action.help and action.help != SUPPRESS, action.option_strings
        flags += action.option_strings
    assert "--resume" in flags and "--save-every" in flags and len(flags) > 15
    missing = [flag for flag in flags if flag not in text]
    assert missing == []


# ---- interrupting and resuming -----------------------------------------------------------------


def _spawn(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ctm_core.train", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_save(proc: subprocess.Popen, out: Path, min_step: int, timeout: float = 90.0) -> Checkpoint:
    """Poll until `out` holds a resumable checkpoint at step ≥ min_step; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            pytest.fail(f"the run ended (code {proc.returncode}) before a save:\n{stdout}\n{stderr}")
        if out.exists():
            ckpt = load_checkpoint(out)  # written atomically: never half a file
            if ckpt.metadata.training is not None and ckpt.metadata.training.state.step >= min_step:
                return ckpt
        time.sleep(0.01)
    proc.kill()
    proc.communicate()
    pytest.fail("no checkpoint in time")


def test_resume_after_a_kill_finishes_like_an_uninterrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "killed.safetensors"
    argv = ["--teacher-steps", "1000", "--ctm-steps", "60", *TINY, "--eval-n", "0", "--save-every", "20"]
    proc = _spawn([*argv, "--out", str(out)], tmp_path)
    try:
        _wait_for_save(proc, out, min_step=20)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    saved = load_checkpoint(out)
    assert saved.metadata.training is not None
    state = saved.metadata.training.state
    assert state.phase in ("teacher", "ctm") and state.step % 20 == 0
    assert saved.state, "a periodic save carries the resume state"

    assert main([*argv, "--out", str(out), "--resume", str(out), "--overwrite"]) == 0
    assert f"resuming {out}: {state.phase} step {state.step}" in capsys.readouterr().out
    final = load_checkpoint(out)
    assert final.metadata.training is not None
    assert final.metadata.training.state == TrainingState(phase="done", step=60)
    assert final.state == {}

    # Resuming is exact: the same weights as a run that was never interrupted.
    reference = tmp_path / "reference.safetensors"
    assert main([*argv, "--out", str(reference)]) == 0
    ref = load_checkpoint(reference)
    for got, want in ((final.student, ref.student), (final.teacher, ref.teacher)):
        sg, sw = got.state_dict(), want.state_dict()
        for key in sw:
            assert torch.equal(sg[key], sw[key]), key


def test_sigint_saves_and_explains_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "interrupted.safetensors"
    argv = ["--teacher-steps", "100000", *TINY, "--eval-n", "0", "--save-every", "20", "--out", str(out)]
    proc = _spawn(argv, tmp_path)
    try:
        _wait_for_save(proc, out, min_step=20)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"--resume {out}" in stderr and "interrupted" in stderr

    ckpt = load_checkpoint(out)
    assert ckpt.metadata.training is not None
    state = ckpt.metadata.training.state
    assert state.phase == "teacher" and state.step >= 20
    assert f"saved teacher step {state.step} to {out}" in stderr
    assert ckpt.state and "rng" in ckpt.state
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary left behind


def test_defaults_reach_the_checkpoint(finished_runs: list[Path]) -> None:
    ckpt = load_checkpoint(finished_runs[0])
    network = ckpt.metadata.network
    assert (network.kind, network.init) == ("monotone", "he")
    assert isinstance(ckpt.student.net, MonotoneNetwork)
    # The jump samplers' schedule is linear, the ODE solvers' Karras (no landing level any more).
    assert (ckpt.noise.jump_schedule, ckpt.noise.schedule) == ("linear", "karras")
    assert "landing" not in ckpt.noise.sampling_kwargs()


def test_init_kind_and_schedule_settings_reach_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "mlp.safetensors"
    argv = [*SHORT, "--eval-n", "0", "--out", str(out)]
    argv += ["--set", 'network.init="pytorch"', "--set", 'network.kind="mlp"']
    argv += ["--set", 'noise.jump_schedule="karras"']
    assert main(argv) == 0
    ckpt = load_checkpoint(out)
    network = ckpt.metadata.network
    assert (network.kind, network.init) == ("mlp", "pytorch")
    assert isinstance(ckpt.student.net, CTMNetwork) and isinstance(ckpt.teacher.net, CTMNetwork)
    assert ckpt.noise.jump_schedule == "karras"
    assert ckpt.noise.sampling_kwargs()["jump_schedule"] == "karras"


def test_threads_default_to_two_at_most() -> None:
    assert build_parser().parse_args([]).threads == min(2, usable_cpus())
