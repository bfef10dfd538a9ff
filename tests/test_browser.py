"""The explorer page in a real headless Chromium, driven by Playwright, against the real server.

Chromium is Debian's `chromium` package (`apt-get install -y chromium`; `.ci/run` installs it),
never a browser downloaded by `playwright install`: CTM_TEST_CHROMIUM, else `chromium` or
`chromium-browser` on PATH. Without it, or without the `playwright` Python package, these tests are
skipped and say why; under CTM_REQUIRE_ALL_TESTS=1 (CI) such a skip fails (tests/conftest.py).
"""

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from real_server import REPO_ROOT, running_server

from ctm_core.checkpoint import TaskInfo, build_model, checkpoint_metadata, save_checkpoint
from ctm_core.config import NetworkConfig, NoiseConfig
from ctm_core.samplers import SAMPLERS, nfe_of

try:
    from playwright.sync_api import Browser, Page, Response, Route, sync_playwright
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
# Training values of the user-data model: two clusters.
TRAINING_VALUES = np.concatenate([np.linspace(-1.5, -0.5, 60), np.linspace(1.5, 2.5, 40)])
# Numbers as the page writes them: 1,234.5, 0.0123, 1.23e-4.
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?")
MAX_SIGNIFICANT_DIGITS = 6
MAX_PATHS = 300  # paths the page draws at most (service/plotting.py MAX_PLOTTED_PATHS)
# The page and every file it loads: its style sheet and its ES modules (explorer.js imports the rest).
PAGE_MODULES = ("explorer", "api", "controls", "plots", "scales", "format", "downloads")
PAGE_FILES = {"/", "/static/explorer.css", *(f"/static/{module}.js" for module in PAGE_MODULES)}

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
    task = TaskInfo(name=path.stem, kind="data", description="user data", kde_points=kde_points)
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
    """The real server on conftest's two models plus one trained "on user data", its default model:
    neither the first in the list nor the configuration's default, so the page must ask /models."""
    write_data_checkpoint(checkpoint_dir / "mydata.safetensors", TRAINING_VALUES.tolist())
    env = {"CTM_DEFAULT_MODEL": "mydata"}
    with running_server(checkpoint_dir, tmp_path / "server.log", env=env) as (base_url, _):
        yield base_url


class Explorer:
    """The page under test, with every request it makes and every script error recorded."""

    def __init__(
        self, browser: "Browser", base_url: str, prepare: Callable[["Page"], None] | None = None
    ) -> None:
        """Open the page (after `prepare(page)`, e.g. to route requests) and wait for its first run."""
        self.page: Page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.file_statuses: dict[str, list[int]] = {}  # path of a page file → the HTTP status of each fetch
        self.page.on("request", lambda r: self.requests.append((r.method, r.url)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", self._record_page_file)
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))
        if prepare is not None:
            prepare(self.page)
        with self.page.expect_response(lambda r: httpx.URL(r.url).path == "/trajectory") as first:
            self.page.goto(f"{base_url}/")  # returns on the load event: every file of the page fetched
            # Each file of the page loaded once: a module missing (404), or not in PAGE_FILES, fails here.
            assert self.file_statuses == {path: [200] for path in PAGE_FILES}, self.file_statuses
        self.first_run = dict(httpx.URL(first.value.url).params)
        self.wait_for_run(0)  # the page samples once on load

    def _record_page_file(self, response: "Response") -> None:
        path = httpx.URL(response.url).path
        if path in PAGE_FILES or path.startswith("/static/"):
            self.file_statuses.setdefault(path, []).append(response.status)

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
        """Choose the settings, click Sample and wait for the views; the run's state. The /trajectory
        answer the page drew is `self.trajectory` (None if the request failed)."""
        page = self.page
        page.select_option("#model", model)
        page.select_option("#sampler", sampler)
        if sampler != "onestep":
            page.fill("#steps", str(steps))
        page.fill("#n", str(n))
        page.fill("#seed", "" if seed is None else str(seed))
        before = self.runs
        with page.expect_response(lambda r: httpx.URL(r.url).path == "/trajectory") as fetched:
            page.click("#sample")
        state = self.wait_for_run(before)
        self.trajectory = fetched.value.json() if fetched.value.ok else None
        return state

    def download(self, button: str) -> tuple[str, str]:
        """Click a download button; (suggested file name, text of the file)."""
        with self.page.expect_download() as started:
            self.page.click(button)
        download = started.value
        path = download.path()
        assert path is not None, download.failure()
        return download.suggested_filename, Path(path).read_text()

    def displayed_numbers(self) -> list[str]:
        """Every number the page shows (its text and the SVG's), but the seed: an identifier."""
        texts = self.page.evaluate(
            """() => {
                const seed = document.getElementById("stat-seed").textContent;
                const svg = Array.from(document.querySelectorAll("svg text"), (t) => t.textContent);
                return [document.body.innerText.replace(seed, ""), ...svg];
            }"""
        )
        return [number for text in texts for number in NUMBER.findall(text)]

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def text(self, selector: str) -> str:
        return (self.page.text_content(selector) or "").strip()


def documented(base_url: str) -> re.Pattern[str]:
    """A pattern matching the paths of the server's OpenAPI document, templates filled by anything."""
    paths = httpx.get(f"{base_url}/openapi.json").json()["paths"]
    alternatives = [re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path)) for path in paths]
    return re.compile("|".join(alternatives))


def significant_digits(number: str) -> int:
    """Significant digits of a number as the page writes it ("1,230" → 3, "0.0120" → 3, "1.5e-4" → 2)."""
    mantissa = number.split("e")[0].replace(",", "")
    digits = mantissa.replace(".", "").lstrip("0")
    return len(digits if "." in mantissa else digits.rstrip("0")) or 1


def assert_numbers_for_people(explorer: Explorer) -> None:
    numbers = explorer.displayed_numbers()
    assert numbers
    too_long = [n for n in numbers if significant_digits(n) > MAX_SIGNIFICANT_DIGITS]
    assert too_long == [], too_long


def assert_documented_requests(explorer: Explorer, base_url: str) -> None:
    """Every request of the page is a GET of its own files or of an endpoint in the OpenAPI document
    (or of a blob: URL the page made itself, for a CSV download)."""
    api = documented(base_url)
    for method, url in explorer.requests:
        if url.startswith(f"blob:{base_url}/"):
            continue
        assert url.startswith(base_url), f"request off the server: {url}"
        path = httpx.URL(url).path
        assert method == "GET" and (path in PAGE_FILES or api.fullmatch(path)), f"{method} {url}"
    assert explorer.errors == []


def assert_w1_shown(explorer: Explorer, base_url: str, params: dict[str, str | int]) -> None:
    """The page's W1 is /evaluate's to 3 significant digits, under /evaluate's word for the reference."""
    evaluation = httpx.get(f"{base_url}/evaluate", params=params).json()
    shown = explorer.text("#stat-w1")
    assert significant_digits(shown) <= 3
    assert float(shown.replace(",", "")) == float(f"{evaluation['w1']:.3g}")
    assert explorer.text("#stat-w1-key").endswith(f"(reference: {evaluation['reference']})")


def test_explorer_in_chromium(browser: "Browser", fixture_server: str, tmp_path: Path) -> None:
    explorer = Explorer(browser, fixture_server)
    assert explorer.page.locator("#model option").all_inner_texts() == ["gauss_1D", "mydata", "two_gmm_1D"]
    # It opens on the server's default model, and samples it.
    assert httpx.get(f"{fixture_server}/models").json()["default_model"] == "mydata"
    assert explorer.page.input_value("#model") == "mydata"
    assert explorer.first_run["model"] == "mydata"
    assert explorer.count("svg#density path.training-histogram") == 1
    assert_numbers_for_people(explorer)

    # One run as a person would make it, checked against the API.
    assert explorer.sample("two_gmm_1D", "multistep", steps=4, n=500, seed=7) == "ready"
    assert explorer.count("svg#paths path.traj") == MAX_PATHS
    assert explorer.count("svg#density path.true-density") == 1
    assert explorer.count("svg#density path.hist") >= 1
    assert "true density" in explorer.text("svg#density .legend")
    assert "samples (n = 500)" in explorer.text("svg#density .legend")
    params = {"model": "two_gmm_1D", "sampler": "multistep", "steps": 4, "n": 500, "seed": 7}
    assert explorer.text("#stat-nfe") == "4"
    assert_w1_shown(explorer, fixture_server, params)
    assert explorer.text("#stat-w1-key") == "W1 to the task (reference: exact)"
    assert explorer.text("#stat-seed") == "7"
    assert re.fullmatch(r"[\d,]+\.\d ms", explorer.text("#stat-latency"))
    assert "seed=7" in (explorer.page.get_attribute("#png-link", "href") or "")
    assert_numbers_for_people(explorer)

    # The samples on display as CSV: a header line, then the values the page fetched, one a line.
    assert explorer.trajectory is not None
    name, text = explorer.download("#download-samples")
    assert name == "two_gmm_1D_multistep_4steps_n500_seed7_samples.csv"
    lines = text.splitlines()
    assert lines[0] == "x" and len(lines) == 1 + 500
    assert [float(v) for v in lines[1:]] == explorer.trajectory["samples"]
    # And the paths: one row a sample, one column a noise level, the sigmas in the header.
    name, text = explorer.download("#download-paths")
    assert name.endswith("_paths.csv")
    header, *rows = text.splitlines()
    sigmas = [float(column.removeprefix("sigma=")) for column in header.split(",")]
    assert header.startswith("sigma=") and sigmas == explorer.trajectory["sigmas"] and len(sigmas) == 5
    assert [[float(v) for v in row.split(",")] for row in rows] == explorer.trajectory["paths"]
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
    reference = {"two_gmm_1D": "path.true-density", "mydata": "path.training-histogram", "gauss_1D": None}
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
                label = "training data (histogram)" if model == "mydata" else "true density"
                assert label in explorer.text("svg#density .legend")
                assert "KDE" not in explorer.text("svg#density .legend")
                params = {"model": model, "sampler": sampler, "steps": steps, "n": 40}
                params["seed"] = explorer.text("#stat-seed")
                if sampler == "gamma":
                    params["gamma"] = explorer.page.input_value("#gamma")
                assert_w1_shown(explorer, fixture_server, params)
            if model == "mydata":
                # The training values on the samples' bins: both outlines have as many steps.
                bars = [
                    explorer.page.get_attribute(f"svg#density {s}", "d") or ""
                    for s in (selector, "path.hist")
                ]
                assert bars[0].count("H") == bars[1].count("H") == 20
                assert explorer.text("#reference-name") == "training data (histogram)"
                assert explorer.text("#stat-w1-key") == "W1 to the training data (reference: kde)"
            assert_numbers_for_people(explorer)

    # The server's refusal is shown, not swallowed.
    assert explorer.sample("two_gmm_1D", "onestep", steps=1, n=10**7) == "error"
    assert "less than or equal to 100000" in explorer.text("#message")

    assert_documented_requests(explorer, fixture_server)


def without_training_values(page: "Page") -> None:
    """Answer /models without `task.kde_points`, as a server that leaves them out of its listing."""

    def strip(route: "Route") -> None:
        response = route.fetch()
        listing = response.json()
        for info in listing["models"]:
            info["task"].pop("kde_points", None)
        route.fulfill(response=response, json=listing)

    page.route("**/models", strip)


def test_explorer_without_training_values_draws_the_labelled_kde(
    browser: "Browser", fixture_server: str
) -> None:
    explorer = Explorer(browser, fixture_server, prepare=without_training_values)
    assert explorer.page.input_value("#model") == "mydata"
    assert explorer.count("svg#density path.training-histogram") == 0
    assert explorer.count("svg#density path.kde-density") == 1
    assert "KDE of the training data (Scott's rule)" in explorer.text("svg#density .legend")
    assert explorer.text("#stat-w1-key") == "W1 to the training data (reference: kde)"
    assert explorer.errors == []


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
        default = httpx.get(f"{base_url}/models").json()["default_model"]
        assert explorer.page.input_value("#model") == explorer.first_run["model"] == default
        for model in models:
            for sampler in SAMPLERS:
                steps = {"onestep": 1, "multistep": 4, "gamma": 4}.get(sampler, 18)
                assert explorer.sample(model, sampler, steps=steps, n=MAX_PATHS, seed=0) == "ready", (
                    f"{model} {sampler}: {explorer.text('#message')}"
                )
                assert explorer.count("svg#paths path.traj") == MAX_PATHS
                curves = "svg#density path.true-density, svg#density path.training-histogram"
                assert explorer.count(curves) == 1
                assert_numbers_for_people(explorer)
        assert_documented_requests(explorer, base_url)
