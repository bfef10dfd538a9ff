"""The explorer page in a real headless Chromium, driven by Playwright, against the real server.

Chromium is Debian's `chromium` package (`apt-get install -y chromium`; `.ci/run` installs it),
never a browser downloaded by `playwright install`: CTM_TEST_CHROMIUM, else `chromium` or
`chromium-browser` on PATH. Without it, or without the `playwright` Python package, these tests are
skipped and say why; under CTM_REQUIRE_ALL_TESTS=1 (CI) such a skip fails (tests/conftest.py).
"""

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from real_server import REPO_ROOT, running_server

from ctm_core.checkpoint import build_model, checkpoint_metadata, save_checkpoint
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.samplers import SAMPLERS, nfe_of

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # the test extra is not installed
    sync_playwright = None


def _find_chromium() -> Path:
    """CTM_TEST_CHROMIUM if set, else the first `chromium` (Debian) or `chromium-browser` on PATH,
    else Debian's /usr/bin/chromium (which then does not exist, and the tests say so)."""
    if os.environ.get("CTM_TEST_CHROMIUM"):
        return Path(os.environ["CTM_TEST_CHROMIUM"])
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else Path("/usr/bin/chromium")


# Found at import: the tests' own fixture hides the CTM_* variables while they run.
CHROMIUM = _find_chromium()
# Headless, and nothing that reaches out to the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_MS = 30_000
MAX_PATHS = 300  # paths the page draws at most (service/plotting.py MAX_PLOTTED_PATHS)
PAGE_FILES = {"/", "/static/explorer.js", "/static/explorer.css"}

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install -y chromium)",
    ),
    pytest.mark.skipif(
        sync_playwright is None,
        reason="the playwright Python package is not installed (pip install -e '.[test]')",
    ),
]


def write_data_checkpoint(path: Path, kde_points: list[float]) -> None:
    """An untrained model of user data whose metadata stores training values for the KDE."""
    network = NetworkConfig(width=16, depth=2)
    noise = NoiseConfig(sigma_min=0.002, sigma_max=10.0, sigma_data=1.0)
    task = {"name": path.stem, "kind": "data", "description": "user data", "kde_points": kde_points}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = build_model(network, 1.0)
    metadata = checkpoint_metadata(network=network, noise=noise, task=task)
    save_checkpoint(path, student=student, teacher=None, metadata=metadata)


@pytest.fixture
def browser() -> Iterator["Browser"]:
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def fixture_server(tmp_path: Path, checkpoint_dir: Path) -> Iterator[str]:
    """The real server on conftest's two models plus one trained "on user data"."""
    values = np.concatenate([np.linspace(-1.5, -0.5, 60), np.linspace(1.5, 2.5, 40)])
    write_data_checkpoint(checkpoint_dir / "mydata.safetensors", values.tolist())
    with running_server(checkpoint_dir, tmp_path / "server.log") as (base_url, _):
        yield base_url


class Explorer:
    """The page under test, with every request it makes and every script error recorded."""

    def __init__(self, browser: "Browser", base_url: str) -> None:
        self.page: Page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append((r.method, r.url)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"{base_url}/")
        self.wait_for_run(0)  # the page samples once on load

    @property
    def runs(self) -> int:
        return int(self.page.evaluate("document.body.dataset.runs"))

    def wait_for_run(self, before: int) -> str:
        """Wait until run number `before` + 1 has finished; its state: "ready" or "error"."""
        body = "document.body.dataset"
        done = f"before => Number({body}.runs) > before && {body}.state !== 'loading'"
        self.page.wait_for_function(done, arg=before, timeout=RUN_TIMEOUT_MS)
        return self.page.evaluate("document.body.dataset.state")

    def sample(self, model: str, sampler: str, steps: int, n: int, seed: int | None = None) -> str:
        """Choose the settings, click Sample and wait for the views; the run's state."""
        page = self.page
        page.select_option("#model", model)
        page.select_option("#sampler", sampler)
        if sampler != "onestep":
            page.fill("#steps", str(steps))
        page.fill("#n", str(n))
        page.fill("#seed", "" if seed is None else str(seed))
        before = self.runs
        page.click("#sample")
        return self.wait_for_run(before)

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def text(self, selector: str) -> str:
        return (self.page.text_content(selector) or "").strip()


def documented(base_url: str) -> re.Pattern[str]:
    """A pattern matching the paths of the server's OpenAPI document, templates filled by anything."""
    paths = httpx.get(f"{base_url}/openapi.json").json()["paths"]
    alternatives = [re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path)) for path in paths]
    return re.compile("|".join(alternatives))


def assert_documented_requests(explorer: Explorer, base_url: str) -> None:
    """Every request of the page is a GET of its own files or of an endpoint in the OpenAPI document."""
    api = documented(base_url)
    for method, url in explorer.requests:
        assert url.startswith(base_url), f"request off the server: {url}"
        path = httpx.URL(url).path
        assert method == "GET" and (path in PAGE_FILES or api.fullmatch(path)), f"{method} {url}"
    assert explorer.errors == []


def test_explorer_in_chromium(browser: "Browser", fixture_server: str, tmp_path: Path) -> None:
    explorer = Explorer(browser, fixture_server)
    assert explorer.page.locator("#model option").all_inner_texts() == ["gauss_1D", "mydata", "two_gmm_1D"]

    # One run as a person would make it, checked against the API.
    assert explorer.sample("two_gmm_1D", "multistep", steps=4, n=500, seed=7) == "ready"
    assert explorer.count("svg#paths path.traj") == MAX_PATHS
    assert explorer.count("svg#density path.true-density") == 1
    assert explorer.count("svg#density path.hist") >= 1
    assert "true density" in explorer.text("svg#density .legend")
    params = {"model": "two_gmm_1D", "sampler": "multistep", "steps": 4, "n": 500, "seed": 7}
    w1 = httpx.get(f"{fixture_server}/evaluate", params=params).json()["w1"]
    assert explorer.text("#stat-nfe") == "4"
    assert explorer.text("#stat-w1") == f"{w1:.4f}"
    assert explorer.text("#stat-seed") == "7"
    assert re.fullmatch(r"\d+ ms", explorer.text("#stat-latency"))
    assert "seed=7" in (explorer.page.get_attribute("#png-link", "href") or "")
    # σ_max at the top: the first state of every path is drawn above its last.
    top, bottom = explorer.page.evaluate(
        """() => {
            const path = document.querySelector("svg#paths path.traj").getAttribute("d");
            const ys = [...path.matchAll(/[ML][^,]+,([-\\d.]+)/g)].map((m) => Number(m[1]));
            return [ys[0], ys[ys.length - 1]];
        }"""
    )
    assert top < bottom
    screenshot = tmp_path / "explorer.png"
    explorer.page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    # Every model and sampler: a built-in task, a model without a reference, one of user data.
    reference = {"two_gmm_1D": "path.true-density", "mydata": "path.kde-density", "gauss_1D": None}
    for model, selector in reference.items():
        for sampler in SAMPLERS:
            steps = 1 if sampler == "onestep" else 3
            assert explorer.sample(model, sampler, steps=steps, n=40) == "ready", explorer.text("#message")
            assert explorer.count("svg#paths path.traj") == 40
            assert explorer.text("#stat-nfe") == str(nfe_of(sampler, steps))
            if selector is None:
                assert explorer.count("svg#density path.reference-density") == 0
                assert "no reference density" in explorer.text("svg#density")
                assert explorer.text("#stat-w1") == "n/a"
            else:
                assert explorer.count(f"svg#density {selector}") == 1
                label = "KDE of the training data" if model == "mydata" else "true density"
                assert label in explorer.text("svg#density .legend")
                assert re.fullmatch(r"\d+\.\d{4}", explorer.text("#stat-w1"))

    # The server's refusal is shown, not swallowed.
    assert explorer.sample("two_gmm_1D", "onestep", steps=1, n=10**7) == "error"
    assert "less than or equal to 100000" in explorer.text("#message")

    assert_documented_requests(explorer, fixture_server)


@pytest.mark.skipif(
    not list((REPO_ROOT / "checkpoints").glob("*.safetensors")), reason="no shipped checkpoints/ to try"
)
def test_explorer_on_shipped_models(browser: "Browser", tmp_path: Path) -> None:
    folder = tmp_path / "shipped"
    shutil.copytree(REPO_ROOT / "checkpoints", folder)
    with running_server(folder, tmp_path / "server.log") as (base_url, _):
        explorer = Explorer(browser, base_url)
        models = explorer.page.locator("#model option").all_inner_texts()
        assert models
        for model in models:
            for sampler in SAMPLERS:
                steps = {"onestep": 1, "multistep": 4, "gamma": 4}.get(sampler, 18)
                assert explorer.sample(model, sampler, steps=steps, n=MAX_PATHS, seed=0) == "ready", (
                    f"{model} {sampler}: {explorer.text('#message')}"
                )
                assert explorer.count("svg#paths path.traj") == MAX_PATHS
                curves = "svg#density path.true-density, svg#density path.kde-density"
                assert explorer.count(curves) == 1
        assert_documented_requests(explorer, base_url)
