"""The explorer's endpoints in-process: the page, /models/{name}/density, /evaluate and /plot.png."""

import io
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import matplotlib.image
import numpy as np
import pytest
import torch
from app_client import serve
from pydantic import ValidationError
from scipy import stats

from ctm_core.checkpoint import TaskInfo, build_model, checkpoint_metadata, save_checkpoint
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.metrics import w1_to_cdf, w1_two_sample
from ctm_core.tasks import get_task
from service.api.routes.explorer import ASSETS, STATIC_DIR
from service.plotting import evenly, histogram_bins, view_range
from service.reference import MAX_KDE_POINTS, reference_for
from service.schemas import DensityResponse, EvaluateResponse

pytestmark = pytest.mark.anyio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Training values stored in the user-data fixture: two clusters, at -1 and 2.
KDE_POINTS = np.sort(np.concatenate([np.linspace(-1.5, -0.5, 60), np.linspace(1.5, 2.5, 40)]))
# What the page's ES modules import: `import { ... } from "./api.js";`.
MODULE_IMPORT = re.compile(r'^import\s[^;]*?\sfrom\s+"([^"]+)";', re.M)


def write_data_checkpoint(path: Path, kde_points: list[float] | None) -> Path:
    """An untrained model "trained on user data", storing `kde_points` in its task metadata (if given)."""
    network = NetworkConfig(width=16, depth=2)
    noise = NoiseConfig(sigma_min=0.002, sigma_max=10.0, sigma_data=1.0)
    task = TaskInfo(name=path.stem, kind="data", description="user data", kde_points=kde_points)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = build_model(network, 1.0)
    metadata = checkpoint_metadata(network=network, noise=noise, task=task, created_at="2024-01-01T00:00:00")
    save_checkpoint(path, student=student, teacher=None, metadata=metadata)
    return path


@pytest.fixture(scope="module")
def _explorer_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("explorer_checkpoints")
    write_data_checkpoint(folder / "mydata.safetensors", KDE_POINTS.tolist())
    write_data_checkpoint(folder / "bare_data.safetensors", None)
    return folder


@pytest.fixture
def explorer_dir(checkpoint_dir: Path, _explorer_checkpoints: Path) -> Path:
    """conftest's two_gmm_1D (a built-in task) and gauss_1D (no reference), plus two user-data models."""
    for path in _explorer_checkpoints.iterdir():
        shutil.copy(path, checkpoint_dir / path.name)
    return checkpoint_dir


@pytest.fixture
async def client(explorer_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(explorer_dir) as client:
        yield client


async def get_json(client: httpx.AsyncClient, url: str, params: dict[str, Any] | None = None) -> Any:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def detail(client: httpx.AsyncClient, url: str, params: dict[str, Any], status: int) -> Any:
    response = await client.get(url, params=params)
    assert response.status_code == status, response.text
    return response.json()["detail"]


async def validation_errors(client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> list[Any]:
    """The `errors` of a 422 for invalid parameters: one item per invalid input."""
    response = await client.get(url, params=params)
    assert response.status_code == 422, response.text
    return response.json()["errors"]


# --- the page --------------------------------------------------------------------------------------


async def page_scripts(client: httpx.AsyncClient) -> dict[str, str]:
    """The page's JavaScript modules as served, by file name."""
    names = [name for name, kind in ASSETS.items() if kind == "text/javascript"]
    return {name: (await client.get(f"/static/{name}")).text for name in names}


async def test_page_has_the_controls_and_only_local_assets(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    controls = ("model", "sampler", "steps", "n", "gamma", "seed", "noise", "sample")
    for control in (*controls, "download-samples", "download-paths"):
        assert f'id="{control}"' in html
    for view in ("density", "paths"):
        assert f'<svg id="{view}"' in html
    # No CDN, no internet: every linked resource is served by this server (or inline).
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(link.startswith(("/", "data:")) for link in links), links
    assert '<script type="module" src="/static/explorer.js">' in html and "/static/explorer.css" in html
    # Every file of the static folder but the page is served, as JavaScript (for a module) or CSS.
    assert {path.name for path in STATIC_DIR.iterdir()} == {*ASSETS, "explorer.html"}
    for asset, kind in ASSETS.items():
        served = await client.get(f"/static/{asset}")
        assert served.status_code == 200
        assert served.headers["content-type"].startswith(kind)
        assert served.headers["cache-control"] == "no-cache"
    # explorer.js imports every other module, by a relative path to a served file, and nothing else.
    scripts = await page_scripts(client)
    reached, unread = set(), ["explorer.js"]
    while unread:
        name = unread.pop()
        reached.add(name)
        imports = MODULE_IMPORT.findall(scripts[name])
        assert all(target.startswith("./") and target[2:] in scripts for target in imports), (name, imports)
        unread.extend(target[2:] for target in imports if target[2:] not in reached)
    assert reached == set(scripts)
    urls = re.findall(r"https?://[^\s\"'`]+", "\n".join(scripts.values()))
    assert urls == ["http://www.w3.org/2000/svg"]
    for missing in ("/static/explorer.html", "/static/nothing.js", "/static/..%2Fapp.py"):
        assert (await client.get(missing)).status_code == 404


# --- /models/{name}/density ------------------------------------------------------------------------


async def test_density_is_the_exact_task_density(client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/models/two_gmm_1D/density", {"lo": -3, "hi": 2.5, "points": 12})
    DensityResponse.model_validate(body)
    assert (body["model"], body["source"], body["label"]) == ("two_gmm_1D", "exact", "true density")
    x = np.linspace(-3, 2.5, 12)
    np.testing.assert_allclose(body["x"], x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(body["density"], get_task("two_gmm_1D").pdf(x), rtol=1e-12, atol=0)

    default = await get_json(client, "/models/two_gmm_1D/density")
    assert len(default["x"]) == len(default["density"]) == 400
    # The default grid holds the bulk of both modes (±1.5, std 0.3) and decays to ~0 at its ends.
    assert default["x"][0] < -2.2 and default["x"][-1] > 2.2
    assert max(default["density"][0], default["density"][-1]) < 1e-3


async def test_density_of_user_data_is_a_labelled_kde(client: httpx.AsyncClient) -> None:
    body = await get_json(client, "/models/mydata/density", {"lo": -3, "hi": 4, "points": 50})
    # The label names the bandwidth rule: the page and the figures draw the values' histogram instead.
    assert (body["source"], body["label"]) == ("kde", "KDE of the training data (Scott's rule)")
    x = np.linspace(-3, 4, 50)
    np.testing.assert_allclose(body["density"], stats.gaussian_kde(KDE_POINTS)(x), rtol=1e-9)
    default = await get_json(client, "/models/mydata/density", {"points": 2})
    assert default["x"][0] < KDE_POINTS[0] and default["x"][-1] > KDE_POINTS[-1]


async def test_density_errors(client: httpx.AsyncClient) -> None:
    url = "/models/two_gmm_1D/density"
    unknown = await detail(client, "/models/nope/density", {}, 404)
    assert "unknown model 'nope'" in unknown and "two_gmm_1D" in unknown
    assert "not a built-in task" in await detail(client, "/models/gauss_1D/density", {}, 404)
    assert "kde_points" in await detail(client, "/models/bare_data/density", {}, 404)
    assert "lo must be below hi" in await detail(client, url, {"lo": 1, "hi": 1}, 422)
    assert "lo must be below hi" in await detail(client, url, {"lo": 2, "hi": -2}, 422)
    assert "hi − lo finite" in await detail(client, url, {"lo": -1e308, "hi": 1e308}, 422)
    assert "both lo and hi" in await detail(client, url, {"lo": 0}, 422)
    assert "both lo and hi" in await detail(client, url, {"hi": 0}, 422)
    for params in ({"lo": "nan", "hi": 1}, {"lo": 0, "hi": "inf"}, {"points": 1}, {"points": 10_001}):
        errors = await validation_errors(client, url, params)
        assert errors and errors[0]["loc"][0] == "query"
    assert len((await get_json(client, url, {"points": 10_000}))["x"]) == 10_000


# --- /evaluate -------------------------------------------------------------------------------------


async def test_evaluate_measures_the_samples_of_sample(client: httpx.AsyncClient) -> None:
    params = {"sampler": "gamma", "steps": 3, "n": 300, "seed": 11, "gamma": 0.3}
    body = await get_json(client, "/evaluate", params)
    EvaluateResponse.model_validate(body)
    # The JSON holds each float32 sample's shortest repr: read back as float32, the values /evaluate measured.
    samples = np.asarray((await get_json(client, "/sample", params))["samples"], dtype=np.float32)
    expected = {"model": "two_gmm_1D", "sampler": "gamma", "steps": 3, "nfe": 3, "n": 300, "seed": 11}
    assert body.items() >= {**expected, "noise": "random", "reference": "exact"}.items()
    assert body["w1"] == pytest.approx(w1_to_cdf(samples, get_task("two_gmm_1D")), rel=1e-9)

    data = {"model": "mydata", "n": 200, "seed": 3}
    body = await get_json(client, "/evaluate", data)
    samples = np.asarray((await get_json(client, "/sample", data))["samples"], dtype=np.float32)
    assert body["reference"] == "kde"
    assert body["w1"] == pytest.approx(w1_two_sample(samples, KDE_POINTS), rel=1e-9)

    for model in ("gauss_1D", "bare_data"):
        body = await get_json(client, "/evaluate", {"model": model, "n": 5})
        assert (body["reference"], body["w1"]) == (None, None)


async def test_the_page_reads_the_training_values_from_models(client: httpx.AsyncClient) -> None:
    # The explorer draws the histogram of /models' task.kde_points: the values /evaluate's W1 uses.
    listing = await get_json(client, "/models")
    task = next(m["task"] for m in listing["models"] if m["name"] == "mydata")
    assert task["kde_points"] == KDE_POINTS.tolist()
    script = "\n".join((await page_scripts(client)).values())
    assert "kde_points" in script and '"training data (histogram)"' in script
    for word in ("exact", "kde"):  # /evaluate's words for its reference, shown as they are
        assert f"(reference: {word})" in script


async def test_evaluate_validates_like_sample(client: httpx.AsyncClient) -> None:
    assert "exactly 1 step" in await detail(client, "/evaluate", {"steps": 2}, 422)
    assert "unknown model" in await detail(client, "/evaluate", {"model": "nope"}, 404)
    for params in ({"n": 0}, {"gamma": 1.5}, {"sampler": "rk4"}, {"seed": -1}):
        assert await validation_errors(client, "/evaluate", params)


# --- /plot.png -------------------------------------------------------------------------------------


async def png(client: httpx.AsyncClient, params: dict[str, Any]) -> np.ndarray:
    response = await client.get("/plot.png", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_MAGIC)
    return matplotlib.image.imread(io.BytesIO(response.content), format="png")


async def test_plot_png(client: httpx.AsyncClient) -> None:
    both = await png(client, {"sampler": "multistep", "steps": 4, "n": 500, "seed": 1})
    density = await png(client, {"model": "mydata", "sampler": "euler", "steps": 6, "view": "density"})
    paths = await png(client, {"model": "gauss_1D", "sampler": "heun", "steps": 3, "view": "paths"})
    # One panel is about half as wide as two, at the same height.
    assert both.shape[0] == density.shape[0] == paths.shape[0]
    assert density.shape[1] == paths.shape[1] < 0.6 * both.shape[1]
    # Not a blank canvas.
    assert both[..., :3].std() > 0.05


async def test_plot_png_validates_like_trajectory(explorer_dir: Path) -> None:
    async with serve(explorer_dir, max_trajectory_values=5_000) as client:
        assert "unknown model" in await detail(client, "/plot.png", {"model": "nope"}, 404)
        assert "exactly 1 step" in await detail(client, "/plot.png", {"sampler": "onestep", "steps": 3}, 422)
        too_many = await detail(client, "/plot.png", {"sampler": "euler", "steps": 9, "n": 600}, 422)
        assert "CTM_MAX_TRAJECTORY_VALUES" in too_many
        for params in ({"n": 20_001}, {"gamma": 2}, {"view": "both-ish"}, {"noise": "pink"}):
            assert await validation_errors(client, "/plot.png", params)


# --- OpenAPI ---------------------------------------------------------------------------------------


async def test_openapi_declares_the_explorer_endpoints(client: httpx.AsyncClient) -> None:
    schema = await get_json(client, "/openapi.json")
    paths = schema["paths"]
    assert "text/html" in paths["/"]["get"]["responses"]["200"]["content"]
    assert not any(path.startswith("/static") for path in paths)

    density = paths["/models/{name}/density"]["get"]
    assert set(density["responses"]) == {"200", "404", "422", "503"}
    params = {p["name"]: p["schema"] for p in density["parameters"]}
    assert (params["points"]["minimum"], params["points"]["maximum"], params["points"]["default"]) == (
        2,
        10_000,
        400,
    )

    evaluate = paths["/evaluate"]["get"]
    assert set(evaluate["responses"]) == {"200", "404", "422", "503"}
    assert {p["name"] for p in evaluate["parameters"]} == {
        "model",
        "sampler",
        "steps",
        "n",
        "seed",
        "gamma",
        "noise",
    }
    assert set(schema["components"]["schemas"]["EvaluateResponse"]["properties"]) >= {
        "w1",
        "reference",
        "nfe",
    }

    plot = paths["/plot.png"]["get"]
    assert "image/png" in plot["responses"]["200"]["content"]
    params = {p["name"]: p["schema"] for p in plot["parameters"]}
    assert params["n"]["maximum"] == 20_000
    assert params["view"]["enum"] == ["both", "density", "paths"]
    # /sample keeps its own limit.
    sample = {p["name"]: p["schema"] for p in paths["/sample"]["get"]["parameters"]}
    assert sample["n"]["maximum"] == 100_000


# --- the library behind them -----------------------------------------------------------------------


def test_reference_for_checkpoint_metadata() -> None:
    assert reference_for(TaskInfo(name="two_gmm_1D")).source == "exact"
    assert reference_for(TaskInfo(name="two_gmm_1D", kind="gaussian_mixture")).source == "exact"
    assert reference_for(TaskInfo(name="two_gmm_1D", kind="data")) is None  # user data named like a task
    assert reference_for(TaskInfo(name="unknown")) is None
    for few in ([1.0], [2.0, 2.0]):  # a KDE needs two distinct values
        assert reference_for(TaskInfo(name="d", kind="data", kde_points=few)) is None
    for bad in ([1.0, "2"], [1.0, float("nan")], [True, False], "1,2"):  # refused when the file loads
        with pytest.raises(ValidationError, match="kde_points"):
            TaskInfo(name="d", kind="data", kde_points=bad)
    many = reference_for(TaskInfo(name="d", kind="data", kde_points=np.arange(5_001.0)[::-1].tolist()))
    assert many is not None and many.source == "kde"
    values = many.task.values
    assert values.size == MAX_KDE_POINTS and (values[0], values[-1]) == (0.0, 5_000.0)
    assert np.all(np.diff(values) > 0)


def test_view_range_joins_samples_and_reference() -> None:
    samples = np.linspace(0.0, 1.0, 1001)
    lo, hi = view_range(samples, (-5.0, 0.5))
    assert lo == -5.0 and hi == pytest.approx(1.0 - 0.001 + 0.1 * 0.998)
    assert view_range(np.array([np.nan, np.inf]), None) == (-1.0, 1.0)
    assert view_range(np.full(10, 3.0), None)[0] < 3.0 < view_range(np.full(10, 3.0), None)[1]
    assert (histogram_bins(1), histogram_bins(1000), histogram_bins(10**6)) == (20, 47, 120)
    rows = np.arange(1000)[:, None]
    assert evenly(rows, 300)[[0, 1, -1], 0].tolist() == [0, 3, 999]  # both tails, not the first 300
    assert evenly(rows[:7], 300).shape == (7, 1)
