"""The images of the smoke test (docker/smoke.py): the debootstrap base image, the torch wheel for
the build, `compose build` with a summary of what ran, and the checks of the built image (non-root
user, HEALTHCHECK, baked-in checkpoints, CPU torch).

Standard library only, as docker/smoke.py.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import engine
from engine import CheckFailed, Compose, EngineError, Log

WHEEL_DIR = Path(__file__).resolve().parent / "wheels"
NO_NETWORK = ["docker", "run", "--rm", "--network", "none"]


def make_base_image(image: str, rootfs_cache: Path, mirror: str, log: Log) -> None:
    """`image`: Debian bookworm minbase + python3, python3-venv, ca-certificates and the host's local
    CAs, from debootstrap (its rootfs cached as a tarball at `rootfs_cache`) and `docker import`."""
    if engine.image_exists(image):
        log("already present; skipping debootstrap")
        return
    if rootfs_cache.is_file() and rootfs_cache.stat().st_size > 0:
        log(f"using cached rootfs {rootfs_cache}")
    else:
        if os.geteuid() != 0:
            raise EngineError("need root for debootstrap")
        with tempfile.TemporaryDirectory(
            prefix="ctm-rootfs.", dir="/var/tmp", ignore_cleanup_errors=True
        ) as tmp:
            rootfs, debootstrap_log = f"{tmp}/rootfs", Path(tmp, "debootstrap.log")
            packages = "python3,python3-venv,ca-certificates"
            log(f"debootstrap --variant=minbase bookworm (+{packages.replace(',', ' ')}) from {mirror}")
            debootstrap = [
                "debootstrap",
                "--variant=minbase",
                f"--include={packages}",
                "bookworm",
                rootfs,
                mirror,
            ]
            with debootstrap_log.open("wb") as out:
                done = subprocess.run(debootstrap, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                for line in debootstrap_log.read_text(errors="replace").splitlines()[-20:]:
                    print(line, flush=True)
                raise EngineError("debootstrap failed")
            # Trust what the host trusts (e.g. a TLS-intercepting proxy's CA), so that pip inside
            # the build reaches PyPI the way the host does.
            host_cas = sorted(glob.glob("/usr/local/share/ca-certificates/*.crt"))
            if host_cas:
                log(f"adding {len(host_cas)} local CA certificate(s) from /usr/local/share/ca-certificates")
                for ca in host_cas:
                    shutil.copy(ca, f"{rootfs}/usr/local/share/ca-certificates/")
                subprocess.run(["chroot", rootfs, "update-ca-certificates"], capture_output=True, check=False)
            for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb"):
                for path in glob.glob(f"{rootfs}/{pattern}"):
                    if os.path.isdir(path):
                        shutil.rmtree(path)
                    else:
                        os.remove(path)
            rootfs_cache.parent.mkdir(parents=True, exist_ok=True)
            partial = Path(f"{rootfs_cache}.tmp")
            engine.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", str(partial), "."], timeout=None)
            partial.replace(rootfs_cache)
        log(f"rootfs cached at {rootfs_cache} ({rootfs_cache.stat().st_size / 2**20:.0f}M)")
    engine.run(
        ["docker", "import", "-c", "ENV LANG=C.UTF-8", "-c", 'CMD ["/bin/bash"]', str(rootfs_cache), image],
        timeout=None,
    )


@dataclass
class WheelCopy:
    """What `torch_wheel` put into docker/wheels/, to remove at the end."""

    copied: Path | None = None
    created_dir: bool = False

    def remove(self) -> None:
        if self.copied:
            self.copied.unlink(missing_ok=True)
        if self.created_dir and WHEEL_DIR.is_dir() and not any(WHEEL_DIR.iterdir()):
            WHEEL_DIR.rmdir()


def torch_wheel(log: Log) -> WheelCopy:
    """CTM_TORCH_WHEEL, else this machine's /opt/wheels/torch-*+cpu-cp311-*.whl, copied into
    docker/wheels/ with CTM_TORCH_SOURCE=local; none: CTM_TORCH_SOURCE=index."""
    found = sorted(glob.glob("/opt/wheels/torch-*+cpu-cp311-*.whl"))
    wheel = os.environ.get("CTM_TORCH_WHEEL") or (found[-1] if found else "")
    copy = WheelCopy()
    if not wheel:
        os.environ["CTM_TORCH_SOURCE"] = "index"
        log("no local CPU torch wheel; TORCH_SOURCE=index (https://download.pytorch.org/whl/cpu)")
        return copy
    if not Path(wheel).is_file():
        raise CheckFailed(f"CTM_TORCH_WHEEL={wheel} does not exist")
    os.environ["CTM_TORCH_SOURCE"] = "local"
    if not WHEEL_DIR.is_dir():
        WHEEL_DIR.mkdir(parents=True)
        copy.created_dir = True
    dest = WHEEL_DIR / Path(wheel).name
    if not dest.exists():
        copy.copied = dest
        shutil.copyfile(wheel, dest)
    log(f"TORCH_SOURCE=local: {dest.name} -> docker/wheels/")
    return copy


def build_summary(build_log: str) -> None:
    """Classic-builder output: list the RUN/COPY steps that ran (were not taken from the cache)."""
    ran, steps, cached = "", 0, 0
    for line in build_log.splitlines():
        if re.match(r"Step [0-9]+/[0-9]+ :", line):
            if ran:
                print(f"    ran: {ran[:100]}")
            words = line.split()
            ran = line if len(words) > 3 and words[3] in ("RUN", "COPY") else ""
            steps += 1
        elif line.startswith(" ---> Using cache"):
            cached, ran = cached + 1, ""
    if ran:
        print(f"    ran: {ran[:100]}")
    print(f"    {steps} steps, {cached} from cache", flush=True)


def build(compose: Compose, what: str, *service: str) -> str:
    """`compose build [service]`, summarised; its log. Failed: the log's last 40 lines, and the log kept."""
    with tempfile.NamedTemporaryFile("w", prefix="ctm-smoke-build.", suffix=".log", delete=False) as log:
        args = compose.args("build", *service)
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, check=False)
    text = Path(log.name).read_text(errors="replace")
    if done.returncode != 0:
        for line in text.splitlines()[-40:]:
            print(f"    {line}")
        raise EngineError(f"{what} build failed (full log: {log.name})")
    os.remove(log.name)
    build_summary(text)
    return text


def nginx_summary(image: str) -> str:
    """Size, nginx version and user of the nginx image."""
    version = engine.output([*NO_NETWORK, "--entrypoint", "nginx", image, "-v"], stderr=True)
    return f"{image}: {engine.image_size(image)}, {version}, user {engine.inspect(image, '{{.Config.User}}')}"


def check_image(image: str, checkpoints: list[Path], log: Log) -> list[str]:
    """Non-root user, a HEALTHCHECK, every checkpoint baked in, a CPU torch; the baked-in checkpoints."""
    user = engine.inspect(image, "{{.Config.User}}")
    if user in ("", "root", "0"):
        raise CheckFailed(f"image runs as root (User='{user}')")
    uid = engine.run([*NO_NETWORK, "--entrypoint", "id", image, "-u"], timeout=120).strip()
    if uid == "0":
        raise CheckFailed("container uid is 0")
    log(f"runs as user '{user}' (uid {uid})")
    if not engine.inspect(image, "{{if .Config.Healthcheck}}{{.Config.Healthcheck.Test}}{{end}}"):
        raise CheckFailed("image has no HEALTHCHECK")
    log("HEALTHCHECK present")
    listing = "cd /app/checkpoints && ls -1 -- *.safetensors 2>/dev/null"
    baked = engine.output([*NO_NETWORK, "--entrypoint", "sh", image, "-c", listing], timeout=120).split()
    for checkpoint in checkpoints:
        if checkpoint.name not in baked:
            raise CheckFailed(f"checkpoints/{checkpoint.name} is not baked into the image")
    # Compare names, not counts: a checkpoint written while this runs may be in the image too.
    log(f"{len(baked)} checkpoint(s) baked into /app/checkpoints: {' '.join(baked)}")
    cpu = 'import torch; assert torch.version.cuda is None; print("torch", torch.__version__, "(CPU)")'
    if engine.stream([*NO_NETWORK, "--entrypoint", "python", image, "-c", cpu]) != 0:
        raise CheckFailed("the image's torch is not a CPU build")
    return baked
