"""Kill one ctm-serve replica under load and check that no GET through nginx fails.

For a running scale-out (docker/compose.scale.yaml: replicas behind nginx):

1. N clients send a mix of idempotent GETs through nginx (/sample with several n and samplers,
   /trajectory, /healthz, /models), each on its own keep-alive connection;
2. after --kill-after seconds, one replica's main process gets SIGKILL through its host PID
   (`docker inspect -f '{{.State.Pid}}'`). That is a crash to Docker, so the restart policy
   (`restart: unless-stopped`) starts the container again; `docker kill` would not do: Docker
   counts it as a manual stop and suspends the restart policy until the next start;
3. the clients go on until the replica is running, healthy (Docker's healthcheck) and answering
   requests through nginx again (a 200 whose X-Served-By ends with its address), or until
   --deadline seconds after the kill, plus --tail seconds.

It prints, before the kill, between the kill and the replica's return, and after it: requests,
failed GETs (a status other than 200, a transport error or a truncated body), responses served
after nginx retried (X-Served-By lists several addresses), latency p50/p99 and request rate;
then the seconds from the kill until the replica was running again, serving through nginx,
and healthy. Exit status 0 when no GET failed and the replica served through nginx again within
--deadline seconds; 1 otherwise; 2 when the set-up is not usable. "healthy" is reported only:
Docker runs the healthcheck every 10 s (compose.scale.yaml), so it lags the first answer by up
to that much, more when the first check after the restart came before the models were loaded.

Standard library only (with docker/engine.py and docker/load.py), so that any python3 runs it.
Needs the `docker` CLI (DOCKER_HOST is honoured) and a compose command, and must run as root on
the Docker host (it signals a host PID). From the repository root, with the scale-out up as
project "ctm-scale":

    sudo python3 docker/replica_kill.py --project ctm-scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import ADDRESS, Compose, EngineError, compose_command, inspect, published_address, run
from load import PHASE_KEYS, Outcome, client, print_table, row

DEFAULT_COMPOSE_FILE = Path(__file__).resolve().parent / "compose.scale.yaml"


class SetupError(Exception):
    """The compose project is not there or not usable (exit status 2)."""


@dataclass
class Recovery:
    """What the watcher saw of the killed container (seconds are time.monotonic())."""

    running: float | None = None
    healthy: float | None = None
    address: str = ""
    restarts: int = 0
    states: list[str] = field(default_factory=list)


STATE = (
    "{{.State.Status}} {{.State.Pid}} {{.RestartCount}} "
    "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} " + ADDRESS
)


def watch(container: str, old_pid: str, killed_at: float, limit: float, rec: Recovery) -> None:
    """Poll the killed container until it runs again under a new PID and is healthy (or `limit`)."""
    last = ""
    while time.monotonic() < killed_at + limit:
        try:
            status, pid, restarts, health, *addresses = inspect(container, STATE).split()
        except (EngineError, ValueError):
            time.sleep(0.2)
            continue
        now = time.monotonic()
        state = f"{status} pid={pid} restarts={restarts} health={health}"
        if state != last:
            rec.states.append(f"{now - killed_at:.1f} s {state}")
            last = state
        if status == "running" and pid not in (old_pid, "0") and addresses:
            if rec.running is None:
                rec.running, rec.address, rec.restarts = now, addresses[0], int(restarts)
            if health in ("healthy", "none"):
                rec.healthy = now
                return
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Kill one ctm-serve replica (SIGKILL to its host PID) while clients send GETs through "
        "nginx; fail if any GET fails or the replica does not serve through nginx again within --deadline s.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "-p",
        "--project",
        default=os.environ.get("COMPOSE_PROJECT_NAME", "docker"),
        help="compose project: COMPOSE_PROJECT_NAME, else 'docker' (compose's name for a project in docker/)",
    )
    parser.add_argument("-f", "--compose-file", type=Path, default=DEFAULT_COMPOSE_FILE, help="compose file")
    parser.add_argument("--service", default="ctm-serve", help="the replicas' compose service")
    parser.add_argument("--nginx-service", default="nginx", help="the load balancer's compose service")
    parser.add_argument(
        "--replica", help="container name or id (prefix) to kill; none: the first replica by name"
    )
    parser.add_argument("-c", "--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds of load before the kill")
    parser.add_argument(
        "--deadline", type=float, default=30.0, help="seconds after the kill for the replica to be back"
    )
    parser.add_argument("--tail", type=float, default=3.0, help="seconds of load after the replica is back")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per GET, seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    try:
        return kill_test(args)
    except (SetupError, EngineError) as exc:
        print(f"replica_kill: {exc}", file=sys.stderr)
        return 2


def kill_test(args: argparse.Namespace) -> int:
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise SetupError("run as root: the kill goes to the replica's host PID (see --help)")
    command = compose_command()
    if not shutil.which(command[0]):
        raise SetupError(
            "no compose command: neither `docker compose` nor docker-compose (or set CTM_COMPOSE)"
        )
    compose = Compose(command, [args.compose_file], args.project)
    replicas = run(compose.args("ps", "-q", args.service)).split()
    nginx = run(compose.args("ps", "-q", args.nginx_service)).split()
    if len(replicas) < 2:
        raise SetupError(f"need at least 2 running replicas of {args.service} in project {args.project}")
    if not nginx:
        raise SetupError(f"no {args.nginx_service} container in project {args.project}")
    names = {cid: inspect(cid, "{{.Name}}").lstrip("/") for cid in replicas}
    matches = [
        c for c in replicas if args.replica and (args.replica == names[c] or c.startswith(args.replica))
    ]
    target = matches[0] if len(matches) == 1 else None
    if args.replica and target is None:
        raise SetupError(f"--replica {args.replica} is not one of {sorted(names.values())}")
    target = target or sorted(replicas, key=lambda c: names[c])[0]
    old_state = inspect(target, STATE).split()
    if old_state[0] != "running":
        raise SetupError(f"{names[target]} is {old_state[0]}, not running")
    old_pid, old_restarts, old_address = old_state[1], int(old_state[2]), old_state[4]
    policy = inspect(target, "{{.HostConfig.RestartPolicy.Name}}")
    host, port = published_address(nginx[0], "8000/tcp")
    print(
        f"replica_kill: project {args.project}: {len(replicas)} replicas behind nginx at {host}:{port}; "
        f"{args.clients} clients; killing {names[target]} ({old_address}, host pid {old_pid}, "
        f"restart policy {policy or 'none'}) after {args.kill_after:g} s",
        flush=True,
    )

    outcomes: list[Outcome] = []
    stop = threading.Event()
    clients = [
        threading.Thread(
            target=client, args=(host, port, args.timeout, args.seed * 1000 + i, stop, outcomes), daemon=True
        )
        for i in range(args.clients)
    ]
    began = time.monotonic()
    for thread in clients:
        thread.start()
    time.sleep(args.kill_after)
    served_before = sum(o.ok and o.addresses[-1:] == [old_address] for o in list(outcomes))

    killed_at = time.monotonic()
    os.kill(int(old_pid), signal.SIGKILL)
    rec = Recovery()
    watcher = threading.Thread(
        target=watch, args=(target, old_pid, killed_at, args.deadline, rec), daemon=True
    )
    watcher.start()

    serving: float | None = None
    scanned = 0
    while time.monotonic() < killed_at + args.deadline:
        if rec.running is not None and serving is None:
            snapshot = outcomes[scanned:]
            scanned += len(snapshot)
            back = [
                o.end for o in snapshot if o.ok and o.start >= rec.running and o.addresses[-1] == rec.address
            ]
            serving = back[0] if back else None
        if serving is not None and rec.healthy is not None:
            break
        if not watcher.is_alive() and rec.running is None:
            break
        time.sleep(0.1)
    time.sleep(args.tail)
    stop.set()
    for thread in clients:
        thread.join(args.timeout + 5)
    ended = time.monotonic()
    watcher.join(1)

    back = serving if serving is not None else killed_at + args.deadline
    phases = [
        ("started before the kill", [o for o in outcomes if o.start < killed_at], killed_at - began),
        ("kill → serving again", [o for o in outcomes if killed_at <= o.start < back], back - killed_at),
        ("after", [o for o in outcomes if o.start >= back], ended - back),
    ]
    rows = [row(label, part, seconds) for label, part, seconds in phases]
    rows.append(row("all", outcomes, ended - began))
    failed = [o for o in outcomes if not o.ok]
    retried = [o for o in outcomes if o.ok and o.retried]

    def since_kill(t: float | None) -> str:
        return f"{t - killed_at:.1f} s after the kill" if t is not None else f"not within {args.deadline:g} s"

    print()
    print_table(rows)
    print()
    print(f"  {names[target]}: {served_before} GETs answered before the kill; SIGKILL to host pid {old_pid}")
    print(f"  running again (new pid):       {since_kill(rec.running)}, address {rec.address or '-'}")
    print(f"  serving through nginx again:   {since_kill(serving)}")
    print(f"  healthy (Docker healthcheck):  {since_kill(rec.healthy)}")
    print(f"  restarts: {old_restarts} -> {rec.restarts}; states: {'; '.join(rec.states)}")
    for o in failed[:10]:
        print(
            f"  FAILED at +{o.start - killed_at:.2f} s: GET {o.path} -> {o.status or '-'}"
            f" {o.served_by} {o.error}"
        )
    in_flight = [o for o in outcomes if o.start < killed_at < o.end and o.addresses[:1] == [old_address]]
    if in_flight:
        moved = sum(o.ok and o.retried for o in in_flight)
        print(
            f"  unfinished at the kill, first sent to {names[target]}: {len(in_flight)} GETs; {moved} "
            f"retried on another replica, {len(in_flight) - moved} answered by it before it died"
        )
    if retried:
        delays = sorted((o.end - o.start) * 1000 for o in retried)
        print(
            f"  retried by nginx: {len(retried)} GETs, {delays[0]:.0f}-{delays[-1]:.0f} ms; "
            f"first tries: {sorted({o.addresses[0] for o in retried})}"
        )

    ok = not failed and serving is not None
    if args.json:

        def after_kill(t: float | None) -> float | None:
            return None if t is None else round(t - killed_at, 2)

        numbers = {
            "project": args.project,
            "replicas": len(replicas),
            "clients": args.clients,
            "requests": len(outcomes),
            "failed": len(failed),
            "retried": len(retried),
            "seconds": round(ended - began, 2),
            "requests_per_s": round(len(outcomes) / (ended - began), 1),
            "running_s": after_kill(rec.running),
            "healthy_s": after_kill(rec.healthy),
            "serving_s": after_kill(serving),
            "phases": [dict(zip(PHASE_KEYS, r, strict=True)) for r in rows],
            "passed": ok,
        }
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    verdict = "PASSED" if ok else "FAILED"
    print(
        f"replica_kill: {verdict}: {len(failed)} of {len(outcomes)} GETs failed, {len(retried)} answered "
        f"after a retry; {names[target]} serving through nginx {since_kill(serving)} (limit "
        f"{args.deadline:g} s), healthy {since_kill(rec.healthy)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
