"""Crash-safe training: `kill -9` at a random moment while checkpoints are written every few steps.

tests/test_train_cli.py covers the rest of item 5: a kill after a save, then `--resume` finishing
with exactly the weights of an uninterrupted run, and Ctrl-C saving with a message. Here saves are
so frequent that a kill often lands inside one, and the file must still be the last complete one.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_training import TINY as TINY_FLAGS

from ctm_core.checkpoint import Checkpoint, TrainingState, load_checkpoint
from ctm_core.train import main

TINY = [*TINY_FLAGS, "--eval-n", "0"]
SAVE_EVERY = 3
TEACHER_STEPS, CTM_STEPS = 800, 20


def _step(ckpt: Checkpoint) -> int:
    """The step of the run the checkpoint was saved at."""
    assert ckpt.metadata.training is not None
    return ckpt.metadata.training.state.step


@pytest.fixture(autouse=True)
def _restore_threads() -> None:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_kill_9_at_a_random_moment_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # A random point of progress (not of time: training speed varies), then a random instant in the
    # next few saves, so the kill often lands inside a write.
    target, delay = rng.randrange(SAVE_EVERY, TEACHER_STEPS // 4), rng.uniform(0.0, 0.05)
    out = tmp_path / "run.safetensors"
    argv = ["--teacher-steps", str(TEACHER_STEPS), "--ctm-steps", str(CTM_STEPS), *TINY]
    argv += ["--save-every", str(SAVE_EVERY), "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctm_core.train", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and _step(load_checkpoint(out)) >= target):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.002)
        time.sleep(delay)
        assert proc.poll() is None, f"the run ended before the kill (step {target}, {delay:.3f} s)"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    context = f"kill {delay:.3f} s after a save at step ≥ {target} (seed {seed})"
    saved = load_checkpoint(out)  # the last complete checkpoint: loads and validates
    assert saved.metadata.training is not None
    state = saved.metadata.training.state
    assert state.phase == "teacher" and state.step % SAVE_EVERY == 0, context
    assert {"rng", "online.net.trunk.0.weight", "target.net.head.weight"} <= set(saved.state), context
    assert any(name.startswith("optim.") for name in saved.state), context
    # A write cut short leaves at most a hidden temporary file, never a *.safetensors.
    assert [p.name for p in tmp_path.glob("*.safetensors")] == [out.name], context

    assert main([*argv, "--resume", str(out), "--overwrite"]) == 0, context
    assert f"resuming {out}: teacher step {state.step}" in capsys.readouterr().out
    final = load_checkpoint(out)
    assert final.metadata.training is not None
    assert final.metadata.training.state == TrainingState(phase="done", step=CTM_STEPS), context
