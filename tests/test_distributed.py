"""Training in several processes: torchrun + DistributedDataParallel on gloo, memory-mapped data.

The two-process runs are real (`python -m torch.distributed.run --standalone --nproc_per_node=2
-m ctm_core.train`): one run to the end, one stopped by SIGTERM after its first save and resumed,
and one whose rank 0 refuses its --out; a process group of one, in this process, shows that the
distributed code path computes what the plain one does.
"""

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from app_client import serve
from real_server import free_port
from tiny_training import TINY

import ctm_core.distributed as distributed
from ctm_core import data as data_module
from ctm_core.checkpoint import Checkpoint, DistributedRun, MemoryMapped, TrainingState, load_checkpoint
from ctm_core.config import CTMConfig, NetworkConfig, NoiseConfig, TeacherConfig, TrainConfig
from ctm_core.data import DataFileError, data_statistics, load_data_file
from ctm_core.distributed import (
    Group,
    Launch,
    LaunchError,
    launch_from_env,
    process_group,
    rank_seed,
    resolve_amp,
    resolve_backend,
    state_digest,
)
from ctm_core.metrics import w1_two_sample
from ctm_core.samplers import generate
from ctm_core.shards import MappedData, shard
from ctm_core.tasks import get_task
from ctm_core.train import main
from ctm_core.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- launch, backend, precision, seeds: pure logic ----------------------------------------------

MASTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_launch_from_env() -> None:
    assert launch_from_env({}) is None
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "0", **MASTER}
    assert launch_from_env(env) == Launch(rank=1, world_size=4, local_rank=0)
    bad = [
        ({"RANK": "1", **MASTER}, "RANK and WORLD_SIZE"),
        ({"RANK": "x", "WORLD_SIZE": "2", **MASTER}, "RANK and WORLD_SIZE"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **MASTER}, "inconsistent"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "MASTER_ADDR and MASTER_PORT not set"),
    ]
    for env, message in bad:
        with pytest.raises(LaunchError, match=message):
            launch_from_env(env)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    cuda = torch.device("cuda", 1)
    assert resolve_backend("auto", CPU) == "gloo"
    assert resolve_backend("auto", cuda) == "nccl"
    assert resolve_backend("gloo", cuda) == "gloo"
    assert resolve_backend("nccl", cuda) == "nccl"
    with pytest.raises(LaunchError, match="nccl needs CUDA"):
        resolve_backend("nccl", CPU)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    with pytest.raises(LaunchError, match="no nccl backend"):
        resolve_backend("auto", cuda)


def test_mixed_precision_choice() -> None:
    cuda = torch.device("cuda", 0)
    assert resolve_amp("auto", CPU) is False and resolve_amp("off", CPU) is False
    with pytest.raises(LaunchError, match="--amp on needs --device cuda"):
        resolve_amp("on", CPU)
    assert resolve_amp("auto", cuda, bf16_supported=True) is True
    assert resolve_amp("on", cuda, bf16_supported=True) is True
    assert resolve_amp("off", cuda, bf16_supported=True) is False
    assert resolve_amp("auto", cuda, bf16_supported=False) is False
    with pytest.raises(LaunchError, match="no bfloat16"):
        resolve_amp("on", cuda, bf16_supported=False)


def test_amp_on_the_cpu_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--amp", "on", "--device", "cpu", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --amp on needs --device cuda (mixed precision only helps on a GPU)"


def test_rank_seeds() -> None:
    assert rank_seed(7, 0) == 7
    seeds = [rank_seed(7, r) for r in range(1, 9)]
    assert len(set(seeds)) == 8 and 7 not in seeds
    assert seeds == [rank_seed(7, r) for r in range(1, 9)]  # deterministic
    assert all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(8, 1) != rank_seed(7, 1)


# ---- sharding in memory and memory-mapped ------------------------------------------------------


def test_in_memory_shards() -> None:
    values = np.arange(10.0)
    assert shard(values, 0, 1) is values
    parts = [shard(values, r, 3) for r in range(3)]
    np.testing.assert_array_equal(parts[1], [1.0, 4.0, 7.0])
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), values)
    with pytest.raises(DataFileError, match="cannot be shared by 6 processes"):
        shard(values, 5, 6)


def test_mapped_data_split_shards_and_samples(tmp_path: Path) -> None:
    n, block = 64 * 50 + 37, 64  # 51 blocks, the last one 37 values long
    path = tmp_path / "index.npy"
    np.save(path, np.arange(n, dtype=np.float64))  # each value is its own index
    values = load_data_file(path, mmap_min_values=0)
    assert isinstance(values, np.memmap) and not values.flags.writeable
    ranks = [MappedData(values, 0.2, seed=3, rank=r, world_size=3, block=block) for r in range(3)]
    first = ranks[0]
    assert first.holdout_blocks.size == round(0.2 * 51) == 10
    assert first.n_train + first.n_holdout == n
    for other in ranks[1:]:  # the split is the same on every rank
        np.testing.assert_array_equal(other.holdout_blocks, first.holdout_blocks)
    everything = np.sort(np.concatenate([first.holdout_blocks, *(r.rank_blocks for r in ranks)]))
    np.testing.assert_array_equal(everything, np.arange(51))  # disjoint, and nothing left out

    train = np.concatenate(list(first.train_chunks()))
    assert train.size == first.n_train
    mean, std = first.train_moments()
    assert mean == pytest.approx(train.mean(), rel=1e-12) and std == pytest.approx(train.std(), rel=1e-12)
    np.testing.assert_array_equal(np.sort(first.train_sample(10**6, seed=0)), np.sort(train))
    assert set(first.holdout_sample(100, seed=0).tolist()) <= set(np.arange(n)[~np.isin(np.arange(n), train)])

    for r, part in enumerate(ranks):
        own = np.concatenate([np.arange(b * block, min((b + 1) * block, n)) for b in part.rank_blocks])
        drawn = part.sample(60_000, torch.Generator().manual_seed(r)).numpy()
        assert drawn.dtype == np.float32
        assert set(drawn.astype(int).tolist()) == set(own.tolist())  # only, and every, own value
        # Uniform over the rank's values, the short last block included: ≈ 60,000/len(own) each.
        counts = np.bincount(np.searchsorted(own, drawn.astype(int)), minlength=own.size)
        expected = drawn.size / own.size
        assert abs(counts.mean() - expected) < 1e-9 and counts.std() < 2 * math.sqrt(expected)


def test_mapped_data_refuses_too_little(tmp_path: Path) -> None:
    values = np.arange(4 * 64, dtype=np.float64)
    with pytest.raises(DataFileError, match="4 training blocks of 64 values cannot be shared by 5"):
        MappedData(values, 0.0, seed=0, rank=0, world_size=5, block=64)
    with pytest.raises(DataFileError, match="leaves 0 for training"):
        MappedData(np.arange(3.0), 0.9, seed=0, block=64)


def test_memory_mapped_loading_checks_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_module, "CHUNK_VALUES", 100)
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=1234).astype(np.float32)
    path = tmp_path / "column.npy"
    np.save(path, values.reshape(-1, 1))
    mapped = load_data_file(path, mmap_min_values=1000)
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float32 and mapped.shape == (1234,)
    small = load_data_file(path, mmap_min_values=2000)  # below the threshold: in memory as before
    assert not isinstance(small, np.memmap) and small.dtype == np.float64
    np.testing.assert_array_equal(small, values.astype(np.float64))
    stats = data_statistics(mapped)
    assert stats["n"] == 1234
    for key in ("mean", "std", "min", "max"):
        assert stats[key] == pytest.approx(getattr(small, key)(), rel=1e-12), key

    values[[150, 777, 778]] = [np.nan, np.inf, -np.inf]
    np.save(path, values)
    with pytest.raises(DataFileError, match="3 NaN or infinite values; the first at index 150"):
        load_data_file(path, mmap_min_values=0)


def test_cli_trains_on_a_memory_mapped_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(-1, 0.3, 3000), rng.normal(2, 0.5, 3000)])
    path = tmp_path / "mixture.npy"
    np.save(path, values)
    out = tmp_path / "mixture.safetensors"
    argv = ["--data", str(path), "--mmap", "on", "--holdout", "0.25", "--eval-n", "300", "--out", str(out)]
    assert main([*argv, "--teacher-steps", "40", "--ctm-steps", "20", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "held-out mean log-likelihood" in printed
    assert "(onestep density)" in printed  # the density /logprob serves for a monotone model
    ckpt = load_checkpoint(out)
    task = ckpt.metadata.task
    # σ_min is the split's KDE bandwidth: modes of sd 0.3 and 0.5 with ~2,250 training values each
    # put the AMISE rule (4/3n)^(1/5)·sd at 0.06–0.10.
    assert 0.03 < ckpt.noise.sigma_min < 0.2
    # 6000 values are 6 blocks of 1024 (the last one 880): round(0.25·6) = 2 blocks held out.
    assert task.n_train is not None and task.n_holdout is not None
    assert task.n_train + task.n_holdout == 6000
    assert task.n_holdout in (2048, 1904)
    assert task.memory_mapped == MemoryMapped(
        block_values=1024, reference_values=task.n_train, holdout_values_evaluated=task.n_holdout
    )
    assert task.statistics is not None and task.statistics.mean == pytest.approx(values.mean(), rel=1e-12)
    assert task.kde_points is not None and len(task.kde_points) == 2000


# ---- one process: the distributed code path changes nothing -------------------------------------


@pytest.fixture
def group_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[Group]:
    """A real gloo process group of one process (this one), torn down after the test."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with process_group(Launch(0, 1, 0), "gloo", CPU) as group:
        assert dist.is_initialized()
        yield group
    assert not dist.is_initialized()


def _config() -> TrainConfig:
    return TrainConfig(
        network=NetworkConfig(width=16, depth=2),
        noise=NoiseConfig(sigma_data=0.5, data_mean=0.0),
        teacher=TeacherConfig(steps=60, batch_size=64, lr=1e-2),
        ctm=CTMConfig(steps=60, batch_size=64, pool_size=128, grid_points=12, lambda_dsm=0.1),
    )


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    models = ("online", "target", "student_eval", "teacher_eval")
    return {f"{m}.{k}": v.clone() for m in models for k, v in getattr(trainer, m).state_dict().items()}


def test_world_of_one_trains_exactly_like_one_process(group_of_one: Group) -> None:
    torch.set_num_threads(1)
    task = get_task("two_gmm_1D")
    plain = Trainer(_config(), task.sample, CPU, progress=False)
    plain.run()
    replicated = Trainer(_config(), task.sample, CPU, progress=False, group=group_of_one)
    assert isinstance(replicated.model, distributed.ReplicatedModel)
    replicated.run()
    assert replicated.state.losses == plain.state.losses  # averaged over one rank: unchanged
    want, got = _weights(plain), _weights(replicated)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert replicated.replicas_sha256 == state_digest(plain.student_eval, plain.teacher_eval)
    assert plain.replicas_sha256 is None  # one process: no check, no collective


def test_collectives_move_plain_tensors(group_of_one: Group) -> None:
    g = group_of_one
    assert (g.distributed, g.is_main, g.world_size) == (True, True, 1)
    assert g.mean(torch.tensor([1.0, 3.0])).tolist() == [1.0, 3.0]
    assert torch.equal(g.broadcast(torch.arange(4)), torch.arange(4))
    assert [t.tolist() for t in g.all_gather(torch.tensor([5, 6]))] == [[5, 6]]
    assert g.all_true(True) and not g.all_true(False)
    assert g.identical(torch.ones(3))
    assert g.first_error(None) is None
    assert g.first_error("bad file") == "bad file"


def test_plain_training_never_touches_torch_distributed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the single-process path called torch.distributed")

    for name in ("init_process_group", "all_reduce", "broadcast", "all_gather", "barrier"):
        monkeypatch.setattr(dist, name, refuse)
    monkeypatch.setattr(distributed, "DistributedDataParallel", refuse)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "plain.safetensors"
    argv = ["--teacher-steps", "30", "--ctm-steps", "20", *TINY, "--eval-n", "0", "--save-every", "10"]
    assert main([*argv, "--out", str(out)]) == 0
    training = load_checkpoint(out).metadata.training
    assert training is not None and training.distributed is None
    assert training.state == TrainingState(phase="done", step=20)


def test_mixed_precision_code_path_runs_on_the_cpu() -> None:
    """The CLI allows --amp only with CUDA; the trainer's autocast path itself runs anywhere."""
    torch.set_num_threads(1)
    task = get_task("two_gmm_1D")
    config = _config().model_copy(update={"ctm": CTMConfig(steps=10, batch_size=64, pool_size=64)})
    full = Trainer(config, task.sample, CPU, progress=False)
    full.run()
    mixed = Trainer(config, task.sample, CPU, progress=False, amp=True)
    mixed.run()
    assert all(p.dtype == torch.float32 for p in mixed.online.parameters())
    assert np.isfinite(mixed.state.losses["teacher"] + mixed.state.losses["ctm"]).all()
    # bfloat16 really was used: close to, but not the same as, the float32 run.
    teacher_full, teacher_mixed = full.state.losses["teacher"][0], mixed.state.losses["teacher"][0]
    assert teacher_mixed != teacher_full and teacher_mixed == pytest.approx(teacher_full, rel=0.05)


# ---- two real processes --------------------------------------------------------------------------


def _torchrun(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        [*command, "-m", "ctm_core.train", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (a hang?):\n{out}\n{err}")
    return proc.returncode, out, err


def _same_models(a: Checkpoint, b: Checkpoint) -> bool:
    pairs = ((a.student, b.student), (a.teacher, b.teacher))
    return all(torch.equal(x.state_dict()[k], y.state_dict()[k]) for x, y in pairs for k in x.state_dict())


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two-process runs on a memory-mapped .npy: one to the end; one stopped by SIGTERM after its
    first periodic save and then resumed with the same command plus --resume."""
    folder = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(2)
    np.save(folder / "values.npy", np.concatenate([rng.normal(-1, 0.3, 4096), rng.normal(2, 0.5, 4096)]))
    argv = [
        "--data", "values.npy", "--mmap", "on", "--holdout", "0.25",
        "--teacher-steps", "300", "--ctm-steps", "40", *TINY, "--eval-n", "400", "--save-every", "20",
        # σ_min fixed: the served test's W1 margin was set for a flow that ends at the data itself.
        "--set", "data_sigma_min=noise",
    ]  # fmt: skip
    code, out, err = _finish(_torchrun([*argv, "--out", "full.safetensors"], folder))
    assert code == 0, err
    full = {"out": out, "err": err, "ckpt": load_checkpoint(folder / "full.safetensors")}

    stopped = folder / "stopped.safetensors"
    proc = _torchrun([*argv, "--out", stopped.name], folder)
    deadline = time.monotonic() + 90
    saved = None
    while saved is None and time.monotonic() < deadline and proc.poll() is None:
        if stopped.exists():
            saved = load_checkpoint(stopped)  # written atomically: never half a file
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # torchrun stops both ranks, as a preempted job would be
    code, _, err = _finish(proc)
    assert saved is not None, err
    assert code != 0, "the run ended before it was stopped"
    interrupted = load_checkpoint(stopped)

    code, out, err = _finish(_torchrun([*argv, "--out", stopped.name, "--resume", stopped.name], folder))
    assert code == 0, err
    resumed = {"out": out, "ckpt": load_checkpoint(stopped), "interrupted": interrupted}
    return {"folder": folder, "full": full, "resumed": resumed}


def test_two_processes_hold_identical_weights(two_process_runs: dict) -> None:
    full = two_process_runs["full"]
    ckpt: Checkpoint = full["ckpt"]
    training = ckpt.metadata.training
    assert training is not None
    digest = state_digest(ckpt.student, ckpt.teacher)
    assert training.distributed == DistributedRun(world_size=2, backend="gloo", replicas_sha256=digest)
    line = (
        "2 processes (gloo): every rank held the same weights, EMAs and teacher at the end of each "
        f"phase (sha256 {digest})"
    )
    assert full["out"].count(line) == 1  # printed by rank 0 only
    assert full["out"].count("trained values (distill)") == 1
    assert "Traceback" not in full["err"]
    assert training.state == TrainingState(phase="done", step=40, world_size=2)
    assert ckpt.state == {}
    task = ckpt.metadata.task
    assert (task.n_train, task.n_holdout) == (8192 - 2048, 2048)
    assert task.memory_mapped is not None and task.memory_mapped.block_values == 1024
    rows = ckpt.metadata.metrics.rows
    assert rows and all(math.isfinite(r["qW1"]) and math.isfinite(r["W1_holdout"]) for r in rows)
    likelihood = ckpt.metadata.metrics.heldout_log_likelihood
    assert likelihood is not None and math.isfinite(likelihood["model"])
    # Only rank 0 wrote: the data, the two checkpoints, nothing else.
    names = sorted(p.name for p in two_process_runs["folder"].iterdir() if not p.name.startswith("."))
    assert names == ["full.safetensors", "stopped.safetensors", "values.npy"]


def test_resume_under_torchrun_continues_exactly(two_process_runs: dict) -> None:
    resumed = two_process_runs["resumed"]
    interrupted: Checkpoint = resumed["interrupted"]
    assert interrupted.metadata.training is not None
    state = interrupted.metadata.training.state
    assert state.world_size == 2 and state.step % 20 == 0 and state.phase in ("teacher", "ctm")
    assert {"rng", "rng.1"} <= set(interrupted.state)  # both ranks' random streams were saved
    assert not torch.equal(interrupted.state["rng"], interrupted.state["rng.1"])
    assert f"resuming stopped.safetensors: {state.phase} step {state.step}" in resumed["out"]
    assert "note:" not in resumed["out"]
    final: Checkpoint = resumed["ckpt"]
    assert final.metadata.training is not None
    assert final.metadata.training.state == TrainingState(phase="done", step=40, world_size=2)
    # The same weights, bit for bit, as the run that was never stopped.
    assert _same_models(final, two_process_runs["full"]["ckpt"])


@pytest.mark.anyio
async def test_the_two_process_checkpoint_serves(two_process_runs: dict, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    source = two_process_runs["folder"] / "full.safetensors"
    (served / "values.safetensors").write_bytes(source.read_bytes())
    quantiles = {"model": "values", "n": 2000, "noise": "quantile"}
    async with serve(served) as client:
        query = {"model": "values", "n": 50, "seed": 3}
        first = await client.get("/sample", params=query)
        second = await client.get("/sample", params=query)
        spread = await client.get("/sample", params=quantiles)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["model_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    samples = np.array(body["samples"])
    assert samples.shape == (50,) and np.isfinite(samples).all()
    assert second.json()["samples"] == body["samples"]

    # The samples are the trained student's, as ctm_core draws them from the checkpoint.
    ckpt = load_checkpoint(source)
    kwargs = ckpt.noise.sampling_kwargs()
    with torch.no_grad():
        student = generate(ckpt.student, "onestep", 1, 50, seed=3, **kwargs).samples.numpy()
        assert ckpt.teacher is not None
        start = generate(ckpt.teacher, "onestep", 1, 2000, noise="quantile", **kwargs).samples.numpy()
    np.testing.assert_allclose(samples, student, rtol=1e-5, atol=1e-5)
    # 40 CTM steps of a tiny run are far from converged (the data lie in about [-2, 3.5]; the one-step
    # samples still spread wider), but distillation moved the one-step map toward the data: closer
    # in W1 to the data file than the map it started from, the teacher's own jump G(·, σ_max, σ_min),
    # which its denoising training never fits.
    data = np.load(two_process_runs["folder"] / "values.npy")
    served_w1 = w1_two_sample(np.array(spread.json()["samples"]), data)
    assert served_w1 < 0.8 * w1_two_sample(start, data), (served_w1, w1_two_sample(start, data))


def test_a_failure_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    """Only rank 0 checks --out; rank 1 learns of the failure through the process group."""
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"keep")
    started = time.monotonic()
    code, _, err = _finish(_torchrun(["--eval-n", "0", *TINY, "--out", out.name], tmp_path), timeout=90)
    assert code != 0
    message = f"{out.name} exists; pass --overwrite to replace it, or --resume {out.name}"
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert sorted(lines) == sorted([f"error: {message}", f"error: rank 0: {message}"])
    assert "exitcode  : 2" in err  # both ranks exited with the usage error's code
    assert out.read_bytes() == b"keep"
    assert time.monotonic() - started < 60
