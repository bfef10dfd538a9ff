"""docker/smoke.py, what `sudo bash docker/smoke-test.sh` runs: end-to-end test of docker/Dockerfile,
docker/compose.yaml and the scaled set-up (docker/compose.scale.yaml: replicas behind nginx) on a
machine without Docker Hub access (and without a running Docker engine).

What it does, each step skipped when already done:
  1. installs Debian's docker.io, docker-compose and debootstrap if missing, and validates the
     compose files (`config -q`);
  2. starts a private dockerd (own data root, exec root, pidfile and socket) unless one already
     answers on that socket, and points DOCKER_HOST at it;
  3. makes the base image ctm-serve-base:bookworm with debootstrap (minbase + python3,
     python3-venv, ca-certificates, plus the host's local CAs) and `docker import`;
  4. copies this machine's CPU torch wheel into docker/wheels/ (TORCH_SOURCE=local);
  5. builds ctm-serve:latest and ctm-serve-nginx:latest through the compose files, checks the image
     (non-root user, HEALTHCHECK, baked-in checkpoints, CPU torch), brings ctm-serve up as project
     "ctm-smoke", waits for the container to be healthy, checks /healthz, /readyz and
     /sample?n=5&seed=1; then again with a host folder of one checkpoint mounted over them;
  6. brings compose.scale.yaml up as project "ctm-smoke-scale" (2 replicas + nginx, one shared
     checkpoint folder) and checks that requests through nginx reach every replica, that a seeded
     /sample is the same from each, and that a checkpoint added to the folder serves on every
     replica within the reload poll interval; then kills one replica under load
     (docker/replica_kill.py: SIGKILL to its host PID, 16 clients of GETs through nginx) and checks
     that no GET fails and that the restart policy has it serving through nginx again within 30 s;
  7. tears down what it started: the compose projects, the wheel copy, and dockerd.
Images stay in the data root as a build cache, so a second run is fast. Exit status 0 when every
check passed, 1 when one failed (after the containers' and dockerd's logs), 130 or 143 on SIGINT or
SIGTERM. Its settings (environment variables) are listed in docker/smoke-test.sh.

The private dockerd, compose and health: docker/engine.py; the base image, the build and the image
checks: docker/images.py; the HTTP checks: docker/http_checks.py. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

import engine
import http_checks
import images
from engine import CheckFailed, Compose

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
PROJECT, SCALE_PROJECT = "ctm-smoke", "ctm-smoke-scale"
IMAGE, NGINX_IMAGE, BASE_IMAGE = "ctm-serve:latest", "ctm-serve-nginx:latest", "ctm-serve-base:bookworm"


class Interrupted(BaseException):
    """SIGINT or SIGTERM: stop, clean up, exit 128 + the signal's number."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


class Smoke:
    """One run: its clock and steps, what it started (for the clean-up), and the steps themselves."""

    def __init__(self) -> None:
        self.t0 = self.step_t0 = time.monotonic()
        self.step_name = ""
        self.compose_cmd: list[str] = []
        # Stopped at the end if this run started it.
        root, exec_root = (
            env("CTM_DOCKER_ROOT", "/var/lib/ctm-docker"),
            env("CTM_DOCKER_EXEC", "/run/ctm-docker"),
        )
        self.dockerd = engine.Dockerd(Path(root), Path(exec_root))
        self.started_project = self.started_scale_project = False
        self.wheel = images.WheelCopy()
        self.ckpt_tmp: Path | None = None
        self.port = ""

    # -- output ------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        print(f"[smoke {int(time.monotonic() - self.t0):4d}s] {message}", flush=True)

    def end_step(self) -> None:
        if self.step_name:
            self.log(f"---- done: {self.step_name} ({int(time.monotonic() - self.step_t0)}s)")

    def step(self, name: str) -> None:
        self.end_step()
        self.step_name, self.step_t0 = name, time.monotonic()
        print()
        self.log(f"==== {name}")

    def compose(self, *files: str, project: str = PROJECT) -> Compose:
        return Compose(self.compose_cmd, [DOCKER / f for f in files or ("compose.yaml",)], project)

    def scale(self) -> Compose:
        return self.compose("compose.scale.yaml", project=SCALE_PROJECT)

    def call(self, cmd: list[str], failure: str) -> None:
        """Run `cmd`, its output indented; CheckFailed(`failure`) when it fails."""
        if engine.stream(cmd) != 0:
            raise CheckFailed(failure)

    # -- steps 1-5: tools, engine, images --------------------------------------------------
    def preflight(self) -> list[Path]:
        self.step("preflight")
        if not (REPO / "service" / "__main__.py").is_file():
            raise CheckFailed("service/__main__.py is missing: nothing to serve yet")
        ckpts = sorted((REPO / "checkpoints").glob("*.safetensors"))
        if not ckpts:
            raise CheckFailed("no checkpoints/*.safetensors to bake into the image")
        self.log(f"repo: {REPO}; {len(ckpts)} checkpoint(s): {' '.join(p.name for p in ckpts)}")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ckpts}
        unreadable = "".join(f"{name}({mode:o}) " for name, mode in modes.items() if not mode & stat.S_IROTH)
        if unreadable:
            self.log(
                f"note: not world-readable: {unreadable}- fine when baked in (the Dockerfile chmods them),"
                " unreadable to the container user when this folder is bind-mounted"
            )
        return ckpts

    def tools(self) -> None:
        self.step("tools: docker.io, docker-compose, debootstrap")
        self.compose_cmd = engine.install_tools(self.log)
        files = "-f docker/compose.yaml [-f docker/compose.host-checkpoints.yaml] config -q"
        compose = " ".join(self.compose_cmd)
        self.log(f"validate compose files: {compose} {files}; -f docker/compose.scale.yaml config -q")
        for names in (
            ["compose.yaml"],
            ["compose.yaml", "compose.host-checkpoints.yaml"],
            ["compose.scale.yaml"],
        ):
            engine.run(self.compose(*names).args("config", "-q"))

    def docker_engine(self) -> None:
        self.step("docker engine")
        engine.connect(self.dockerd, self.log)

    def build_images(self, ckpts: list[Path], scale: bool) -> list[str]:
        """Base image, torch wheel, compose build (and nginx's), image checks: the baked-in checkpoints."""
        self.step(f"base image {BASE_IMAGE}")
        rootfs = Path(env("CTM_ROOTFS_CACHE", "/var/cache/ctm-serve-docker/bookworm-rootfs.tar"))
        images.make_base_image(
            BASE_IMAGE, rootfs, env("CTM_DEBIAN_MIRROR", "http://deb.debian.org/debian"), self.log
        )
        python = engine.output([*images.NO_NETWORK, BASE_IMAGE, "python3", "--version"])
        self.log(f"{BASE_IMAGE}: {python}, {engine.image_size(BASE_IMAGE)}")

        self.step("torch source")
        self.wheel = images.torch_wheel(self.log)

        self.step(f"build {IMAGE} (compose build)")
        os.environ.update(CTM_BASE_IMAGE=BASE_IMAGE, CTM_BUILD_NETWORK="host")
        source = os.environ["CTM_TORCH_SOURCE"]
        self.log(f"CTM_BASE_IMAGE={BASE_IMAGE} CTM_TORCH_SOURCE={source} CTM_BUILD_NETWORK=host")
        for line in images.build(self.compose(), "image").splitlines():
            if line.startswith("torch ") and line[6:7].isdigit():
                print(f"    {line}")
        self.log(f"{IMAGE}: {engine.image_size(IMAGE)}")
        if scale:
            self.step(f"build {NGINX_IMAGE} (compose build nginx)")
            images.build(self.scale(), "nginx image", "nginx")
            self.log(images.nginx_summary(NGINX_IMAGE))

        self.step("image checks")
        return images.check_image(IMAGE, ckpts, self.log)

    def serve(self, label: str, expected: int, *extra: str) -> None:
        """compose up, wait for healthy, check /healthz, /readyz (`expected` models) and /sample."""
        self.step(f"compose up: {label}")
        up = self.compose("compose.yaml", *extra).args("up", "-d", "--no-build")
        self.log(" ".join(up).replace(f"{REPO}/", ""))
        self.call(up, f"compose up failed ({label})")
        cid = engine.run(self.compose().args("ps", "-q", "ctm-serve")).strip()
        if not cid:
            raise CheckFailed("no container for service ctm-serve")
        self.log(f"container {cid[:12]} publishes 127.0.0.1:{self.port} -> 8000")
        self.wait_healthy(label, [cid])
        self.step(f"HTTP checks: {label}")
        http_checks.one_container(self.port, expected)
        self.log("HTTP checks passed")

    def wait_healthy(self, label: str, containers: list[str]) -> None:
        timeout = float(env("CTM_HEALTH_TIMEOUT", "240"))
        self.step(f"wait for healthy: {label} (timeout {timeout:g}s)")
        engine.wait_healthy(containers, timeout, self.log)
        self.log(f"healthy after {int(time.monotonic() - self.step_t0)}s")

    # -- step 6 ------------------------------------------------------------------------------
    def replicas(self, ckpts: list[Path], one: Path) -> None:
        """compose.scale.yaml: replicas behind nginx, sharing the folder CTM_CHECKPOINTS."""
        assert self.ckpt_tmp is not None
        count = int(env("CTM_SMOKE_REPLICAS", "2"))
        poll = os.environ["CTM_RELOAD_POLL_S"] = env("CTM_SMOKE_POLL_S", "2")
        # A checkpoint to add while they serve: another shipped one, or a copy of the first under a new name.
        added = next((p.name for p in ckpts if p != one), f"{one.stem}_copy.safetensors")
        scale = self.scale()

        self.step(f"compose up: {count} replicas behind nginx")
        self.log(f"compose down (project {PROJECT}): frees port {self.port} for nginx")
        engine.stream(self.compose().args("down", "--remove-orphans"))
        self.started_project, self.started_scale_project = False, True
        subprocess.run(scale.args("down", "--remove-orphans"), capture_output=True, check=False)  # leftovers
        self.log(f"CTM_CHECKPOINTS={self.ckpt_tmp} ({one.name} only) CTM_RELOAD_POLL_S={poll}")
        up = scale.args("up", "-d", "--no-build", "--scale", f"ctm-serve={count}")
        self.log(" ".join(up).replace(f"{REPO}/", ""))
        self.call(up, "compose up failed (replicas)")
        replicas = engine.run(scale.args("ps", "-q", "ctm-serve")).split()
        nginx = engine.run(scale.args("ps", "-q", "nginx")).strip()
        if len(replicas) != count:
            raise CheckFailed(f"expected {count} ctm-serve containers, got {len(replicas)}")
        if not nginx:
            raise CheckFailed("no container for service nginx")
        if any(
            engine.inspect(cid, "{{range $p, $b := .HostConfig.PortBindings}}{{$p}} {{end}}")
            for cid in replicas
        ):
            raise CheckFailed("a replica publishes a host port")
        self.log(f"replicas publish no port; nginx publishes 127.0.0.1:{self.port} -> 8000")

        self.wait_healthy(f"{count} replicas and nginx", [*replicas, nginx])

        self.step("HTTP checks through nginx: every replica answers, alike; reload from the shared folder")
        # Each replica's name and its address on the project network (what X-Served-By names).
        names = {
            engine.inspect(cid, "{{.Name}}").lstrip("/"): engine.inspect(cid, engine.ADDRESS)
            for cid in replicas
        }
        touch = subprocess.run(
            ["docker", "exec", replicas[0], "touch", "/app/checkpoints/x"],
            capture_output=True,
            text=True,
            check=False,
        )
        if touch.returncode == 0:
            raise CheckFailed("the checkpoint folder is writable from a replica")
        why = (touch.stdout + touch.stderr).strip().rpartition(": ")[2]
        self.log(f"checkpoint folder read-only in the replicas: {why}")
        http_checks.through_nginx(
            self.port,
            str(one),
            str(REPO / "checkpoints" / added),
            str(self.ckpt_tmp / added),
            float(poll),
            names,
        )
        self.log("HTTP checks through nginx passed")

        # A replica killed under load (SIGKILL to its host PID, as a crash): no GET through nginx may
        # fail, and the restart policy must have it serving through nginx again within 30 s.
        if env("CTM_SMOKE_KILL", "1") == "0":
            return
        if os.geteuid() != 0:
            self.log("skipping the replica kill under load: it signals a host PID, which needs root")
            return
        self.step("replica killed under load: no failed GET, serving again within 30 s")
        kill = [sys.executable, str(DOCKER / "replica_kill.py"), "-f", str(DOCKER / "compose.scale.yaml")]
        kill_env = {**os.environ, "CTM_COMPOSE": " ".join(self.compose_cmd)}
        if engine.stream([*kill, "-p", SCALE_PROJECT, "--deadline", "30"], env=kill_env) != 0:
            raise CheckFailed("replica kill under load: a GET failed, or the replica was not back in time")
        self.log("replica kill test passed")

    # -- the run, and the clean-up -----------------------------------------------------------
    def run(self) -> None:
        ckpts = self.preflight()
        self.tools()
        self.docker_engine()
        scale = env("CTM_SMOKE_SCALE", "1") != "0"
        baked = self.build_images(ckpts, scale)

        self.started_project = True
        leftovers = self.compose().args("down", "--remove-orphans")  # of an interrupted run
        subprocess.run(leftovers, capture_output=True, check=False)
        self.port = engine.host_port(self.log)
        # 1. The checkpoints baked into the image.
        self.serve("baked-in checkpoints", len(baked))
        # 2. A host folder mounted over them (compose.host-checkpoints.yaml): a world-readable copy of
        #    one checkpoint, so that the model count shows the mount is what is served.
        self.ckpt_tmp = Path(tempfile.mkdtemp(prefix="ctm-smoke-checkpoints.", dir="/tmp"))
        one = REPO / "checkpoints" / "two_gmm_1D.safetensors"
        one = one if one.is_file() else ckpts[0]
        shutil.copyfile(one, self.ckpt_tmp / one.name)
        self.ckpt_tmp.chmod(0o755)
        (self.ckpt_tmp / one.name).chmod(0o644)
        os.environ["CTM_CHECKPOINTS"] = str(self.ckpt_tmp)
        self.serve(f"host folder mounted ({one.name} only)", 1, "compose.host-checkpoints.yaml")
        # 3. Replicas behind nginx (compose.scale.yaml), all mounting the same folder read-only.
        if scale:
            self.replicas(ckpts, one)
        self.end_step()
        if not scale:
            self.log("CTM_SMOKE_SCALE=0: skipping the replicas behind nginx")

    def cleanup(self, rc: int) -> None:
        print()
        self.log(f"==== cleanup (exit status so far: {rc})")
        projects = [
            (self.started_project, self.compose(), "container logs (last 80 lines):"),
            (
                self.started_scale_project,
                self.scale(),
                f"container logs of {SCALE_PROJECT} (last 40 lines each):",
            ),
        ]
        for started, compose, logs in projects:
            if not started:
                continue
            if rc:
                self.log(logs)
                engine.stream(
                    compose.args("logs", "--no-color", "--tail", logs.split("(last ")[1].split()[0])
                )
            self.log(f"compose down (project {compose.project})")
            engine.stream(compose.args("down", "--remove-orphans"))
        with contextlib.suppress(OSError):
            self.wheel.remove()
        if self.ckpt_tmp:
            shutil.rmtree(self.ckpt_tmp, ignore_errors=True)
        self.dockerd.finish(failed=rc != 0, keep=env("CTM_KEEP_DOCKERD", "0") == "1", log=self.log)
        elapsed = int(time.monotonic() - self.t0)
        self.log(
            f"SMOKE TEST PASSED in {elapsed}s"
            if rc == 0
            else f"SMOKE TEST FAILED (exit {rc}) after {elapsed}s"
        )


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    smoke = Smoke()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    rc = 0
    try:
        smoke.run()
    except CheckFailed as exc:  # EngineError too
        smoke.log(f"FAIL: {exc}")
        rc = 1
    except Interrupted as exc:
        rc = exc.code
    except Exception as exc:  # a bug here: still tear down what was started
        traceback.print_exc()
        smoke.log(f"FAIL: {type(exc).__name__}: {exc}")
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    smoke.cleanup(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
