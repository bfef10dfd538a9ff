"""The Docker engine, for docker/smoke.py and docker/replica_kill.py: docker and compose commands
(and the tools, installed if missing), a private dockerd (its own data root, exec root, pidfile and
socket), the host port to publish, and waiting for containers to be healthy.

Standard library only, so that any python3 runs it (the smoke test may run before a virtualenv).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Log = Callable[[str], None]

# The address of a container on its (one) compose network; with a space after each, for several.
ADDRESS = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"


class CheckFailed(Exception):
    """A check of the smoke test failed: the message says which, and how."""


class EngineError(CheckFailed):
    """A docker or compose command failed, or the engine or a container is not usable."""


def run(cmd: list[str], timeout: float | None = 30) -> str:
    """Run `cmd` and return its stdout; EngineError when it fails, cannot start or runs past `timeout`."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{shlex.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise EngineError(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout


def output(cmd: list[str], timeout: float | None = 60, stderr: bool = False) -> str:
    """`cmd`'s stdout (and stderr, with `stderr`), stripped, whatever its exit status ("": cannot run)."""
    try:
        done = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def stream(cmd: list[str], prefix: str = "    ", env: dict[str, str] | None = None) -> int:
    """Run `cmd`, printing its output (stdout and stderr) line by line with `prefix`; its exit status."""
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
        )
    except OSError as exc:
        print(f"{prefix}{shlex.join(cmd)}: {exc}", flush=True)
        return 127
    with proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(prefix + line.rstrip("\n"), flush=True)
    return proc.returncode


def answers() -> bool:
    """Whether the engine at DOCKER_HOST (or the default socket) answers."""
    return subprocess.run(["docker", "version"], capture_output=True, check=False).returncode == 0


def compose_command() -> list[str]:
    """CTM_COMPOSE, else `docker compose` when the plugin is there, else docker-compose (maybe missing)."""
    if os.environ.get("CTM_COMPOSE"):
        return shlex.split(os.environ["CTM_COMPOSE"])
    plugin = ["docker", "compose", "version"]
    if shutil.which("docker") and subprocess.run(plugin, capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def install_tools(log: Log) -> list[str]:
    """apt-get install Debian's docker.io, docker-compose and debootstrap if missing; the compose command."""
    compose = compose_command()
    wanted = {"dockerd": "docker.io", "docker": "docker.io", "debootstrap": "debootstrap"}
    if compose == ["docker-compose"]:
        wanted["docker-compose"] = "docker-compose"
    missing = sorted({package for command, package in wanted.items() if not shutil.which(command)})
    if missing:
        if os.geteuid() != 0:
            raise EngineError(f"need root to apt-get install: {' '.join(missing)}")
        log(f"apt-get install {' '.join(missing)}")
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", *missing]):
            if subprocess.run(["apt-get", *args], env=apt, stdout=subprocess.DEVNULL, check=False).returncode:
                raise EngineError(f"apt-get {' '.join(args)} failed")
    if not shutil.which(compose[0]):
        raise EngineError(f"{compose[0]} is not installed")
    log(f"docker client: {output(['docker', 'version', '--format', '{{.Client.Version}}'])}")
    version = output([*compose, "version", "--short"]) or output([*compose, "version"]).partition("\n")[0]
    log(f"compose: {' '.join(compose)} ({version})")
    return compose


@dataclass(frozen=True)
class Compose:
    """A compose command with its files and project: `compose.args("ps", "-q")` is the command line."""

    command: list[str]
    files: list[Path]
    project: str

    def args(self, *args: str) -> list[str]:
        files = [arg for path in self.files for arg in ("-f", str(path))]
        return [*self.command, *files, "-p", self.project, *args]


def inspect(container: str, template: str) -> str:
    return run(["docker", "inspect", "-f", template, container]).strip()


def image_exists(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode
        == 0
    )


def image_size(image: str) -> str:
    size = run(["docker", "image", "inspect", "-f", "{{.Size}}", image]).strip()
    return f"{int(size) / 1e6:.0f} MB"


def published_address(container: str, port: str) -> tuple[str, int]:
    """The host address (IPv4) on which `container` publishes `port` ("8000/tcp")."""
    for line in run(["docker", "port", container, port]).splitlines():
        host, _, number = line.strip().rpartition(":")
        host = host.strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" not in host:  # an IPv4 binding; skip the IPv6 twin
            return host, int(number)
    raise EngineError(f"{container[:12]} publishes no port for {port}")


def host_port(log: Log) -> str:
    """The host port to publish, exported as CTM_HOST_PORT: CTM_HOST_PORT (it must be free), else 8000,
    else (8000 taken) a free one."""

    def in_use(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    port = os.environ.get("CTM_HOST_PORT") or ""
    if port and in_use(int(port)):
        raise EngineError(f"CTM_HOST_PORT={port} is already in use")
    if not port:
        port = "8000"
        if in_use(8000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = str(s.getsockname()[1])
            log(f"port 8000 is taken on this machine; publishing on {port} instead")
    os.environ["CTM_HOST_PORT"] = port
    return port


@dataclass
class Dockerd:
    """A private dockerd: data root `data_root`; exec root `exec_root`, with socket, pidfile and log
    beside it (`<exec_root>.sock`, `.pid`, `.log`)."""

    data_root: Path
    exec_root: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def sock(self) -> Path:
        return Path(f"{self.exec_root}.sock")

    @property
    def log(self) -> Path:
        return Path(f"{self.exec_root}.log")

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def start(self, timeout: int = 60) -> None:
        """Start it (DOCKER_HOST must already name `host`) and wait until it answers."""
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        # Sandbox-friendly and leaves no host state behind: no docker0 bridge, no iptables rules,
        # no ip_forward change. Builds use the host network; a compose project gets its own bridge
        # network and its port is published by docker-proxy. Its own session: a signal meant for
        # the smoke test does not stop it before the compose projects are down.
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    *("--data-root", str(self.data_root), "--exec-root", str(self.exec_root)),
                    *("--pidfile", f"{self.exec_root}.pid", "--host", self.host),
                    *("--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for _ in range(timeout):
            if answers():
                return
            if self.process.poll() is not None:
                raise EngineError(f"dockerd exited; see {self.log}")
            time.sleep(1)
        if not answers():
            raise EngineError(f"dockerd did not answer within {timeout}s")

    def finish(self, failed: bool, keep: bool, log: Log) -> None:
        """After a run that started it: the last 20 lines of its log if the run `failed`; stop it
        unless `keep`. Nothing when it was not started."""
        if self.process is None:
            return
        if failed and self.log.is_file():
            log("dockerd log (last 20 lines):")
            for line in self.log.read_text(errors="replace").splitlines()[-20:]:
                print(f"    {line}", flush=True)
        if keep:
            log(f"leaving dockerd (pid {self.process.pid}) running: DOCKER_HOST={self.host}")
            return
        log(f"stopping the dockerd this script started (pid {self.process.pid})")
        self.stop(log)

    def stop(self, log: Log) -> None:
        """SIGTERM, SIGKILL after 30 s; then unmount what it left in its exec root."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            log("dockerd still running after 30s; sending SIGKILL")
            self.process.kill()
            self.process.wait(10)
        # dockerd leaves its default network namespace mounted (nsfs) in its exec root.
        root = f"{self.exec_root}/"
        with open("/proc/mounts") as mounts:
            leftover = sorted(
                (line.split()[1] for line in mounts if line.split()[1].startswith(root)), reverse=True
            )
        for mount in leftover:
            if subprocess.run(["umount", mount], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def connect(dockerd: Dockerd, log: Log) -> None:
    """Point DOCKER_HOST at an engine: the one it names, else `dockerd`'s socket, where `dockerd` is
    started unless an engine already answers there (`dockerd.process` says whether it was)."""
    if os.environ.get("DOCKER_HOST"):
        if not answers():
            raise EngineError(f"DOCKER_HOST={os.environ['DOCKER_HOST']} is set but does not answer")
        log(f"using the engine at DOCKER_HOST={os.environ['DOCKER_HOST']} (not managed by this script)")
    else:
        os.environ["DOCKER_HOST"] = dockerd.host
        if answers():
            log(f"a dockerd already answers on {dockerd.host}; using it and leaving it running")
        else:
            if os.geteuid() != 0:
                raise EngineError("need root to start dockerd")
            log(f"starting dockerd: data root {dockerd.data_root}, socket {dockerd.sock}, log {dockerd.log}")
            dockerd.start()
    server = "server {{.Server.Version}}, API {{.Server.APIVersion}}"
    log(f"engine: {run(['docker', 'version', '--format', server]).strip()}")
    info = "storage driver {{.Driver}}, cgroup {{.CgroupVersion}}, data root {{.DockerRootDir}}"
    log(run(["docker", "info", "--format", info]).strip())


def wait_healthy(containers: list[str], timeout: float, log: Log) -> None:
    """Wait until each container's healthcheck says healthy, logging each change of state; EngineError
    when one has no healthcheck, turns unhealthy, stops or restarts, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    state_of = (
        "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}"
    )
    last: dict[str, str] = {}
    while True:
        everyone = True
        for cid in containers:
            state = inspect(cid, state_of)
            status, health, restarts = state.split()
            name = f"{inspect(cid, '{{.Name}}').lstrip('/')}: " if len(containers) > 1 else ""
            if state != last.get(cid):
                log(f"{name}status={status} health={health} restarts={restarts}")
                last[cid] = state
            if health == "none":
                raise EngineError(f"{name}container has no healthcheck")
            if health == "unhealthy":
                raise EngineError(f"{name}container became unhealthy")
            if status in ("exited", "dead") or restarts != "0":
                raise EngineError(f"{name}container stopped (status={status}, restarts={restarts})")
            everyone = everyone and health == "healthy"
        if everyone:
            return
        if time.monotonic() >= deadline:
            raise EngineError(f"not healthy after {timeout:g}s")
        time.sleep(2)
