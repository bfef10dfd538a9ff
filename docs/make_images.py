"""Regenerate the images of docs/BENCHMARKS.md and docs/SERVING.md from a trained checkpoint: the
explorer page and the figures.

    python docs/make_images.py                      # checkpoints/two_gmm_1D.safetensors → docs/img/

Writes explorer.png (a screenshot of `/` in headless Chromium, Debian's `chromium` package, driven
by Playwright from the test extra), plot.png (`GET /plot.png`), and density.png and paths.png
(`ctm_core.plots`, several samplers side by side, as in the original project's figures).
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=REPO_ROOT / "checkpoints" / "two_gmm_1D.safetensors"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img", help="folder for the PNGs")
    parser.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"))
    parser.add_argument(
        "--query",
        default="sampler=multistep&steps=4&n=2000&seed=0",
        help="the page's settings (its address's query, without the model)",
    )
    return parser


def serve(checkpoint: Path, folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """The real server on a copy of one checkpoint; returns once it is ready."""
    (folder / checkpoint.name).write_bytes(checkpoint.read_bytes())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTM_")} | {"CTM_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "service", "--port", str(port), "--checkpoint-dir", str(folder)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return base_url, process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"make_images: the server did not become ready on {checkpoint}")


def screenshot(base_url: str, url: str, chromium: Path, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
        page.goto(url)
        page.wait_for_function("Number(document.body.dataset.runs) >= 1", timeout=60_000)
        if page.evaluate("document.body.dataset.state") != "ready":
            raise SystemExit(f"make_images: the page failed: {page.text_content('#message')}")
        page.screenshot(path=str(path), full_page=True)
        browser.close()


def training_figures(checkpoint: Path, out: Path) -> None:
    """density.png and paths.png of ctm_core.plots, for a model of a built-in task."""
    import matplotlib.pyplot as plt

    from ctm_core.checkpoint import load_checkpoint
    from ctm_core.plots import write_training_figures
    from ctm_core.tasks import get_task

    loaded = load_checkpoint(checkpoint)
    task = get_task(loaded.metadata.task.name)
    write_training_figures(out, loaded.student, loaded.teacher, task, loaded.noise)
    plt.close("all")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"make_images: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.checkpoint.stem
    with tempfile.TemporaryDirectory() as folder:
        base_url, process = serve(args.checkpoint, Path(folder))
        try:
            screenshot(
                base_url, f"{base_url}/?model={model}&{args.query}", args.chromium, args.out / "explorer.png"
            )
            plot = httpx.get(f"{base_url}/plot.png?model={model}&{args.query}", timeout=60)
            plot.raise_for_status()
            (args.out / "plot.png").write_bytes(plot.content)
        finally:
            process.terminate()
            process.wait()
    training_figures(args.checkpoint, args.out)
    for name in ("explorer.png", "plot.png", "density.png", "paths.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
