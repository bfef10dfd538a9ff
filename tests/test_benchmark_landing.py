"""`python -m benchmarks.landing`: its table agrees with the samplers it scans, and bad flags exit 2."""

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ctm_core.checkpoint import load_checkpoint
from ctm_core.metrics import quantile_w1
from ctm_core.samplers import generate
from ctm_core.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import landing  # noqa: E402

TASK = "single_gaussian_1D"
N = 400


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_table_matches_the_samplers(capsys: pytest.CaptureFixture[str]) -> None:
    ratios = ["0.02", "0.001"]  # 0.001·σ_data is below σ_min: no such schedule
    argv = ["--checkpoints", str(ROOT / "checkpoints"), "--tasks", TASK, "--n", str(N), "--ratios", *ratios]
    assert landing.main(argv) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {TASK} "))
    cells = [c.strip() for c in row.strip("|").split("|")]

    checkpoint = load_checkpoint(ROOT / "checkpoints" / f"{TASK}.safetensors")
    task, model, kwargs = get_task(TASK), checkpoint.student, checkpoint.noise.sampling_kwargs()
    one_step = quantile_w1(generate(model, "onestep", 1, N, noise="quantile", **kwargs).samples, task)
    assert float(cells[2]) == pytest.approx(one_step, abs=5e-6)

    kwargs["landing"] = 0.02 * model.sigma_data
    best = {
        k: min(
            quantile_w1(generate(model, s, k, N, noise="quantile", gamma=g, **kwargs).samples, task)
            for s, g in [("multistep", 0.0), ("gamma", 0.3), ("gamma", 0.5), ("gamma", 1.0)]
        )
        for k in (2, 4)
    }
    two, four = map(float, re.findall(r"\d+\.\d+", cells[3]))
    assert (two, four) == pytest.approx((best[2], best[4]), abs=5e-6)
    assert cells[3].endswith("✓") == (min(best.values()) <= one_step)
    assert cells[4] == "–"


@pytest.mark.parametrize("argv", [["--n", "1"], ["--ratios", "0"], ["--checkpoints", "/nonexistent"]])
def test_bad_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        landing.main(argv)
    assert exc.value.code == 2
