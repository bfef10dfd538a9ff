#!/usr/bin/env bash
# docker/smoke-test.sh: end-to-end test of docker/Dockerfile, docker/compose.yaml and the scaled
# set-up (docker/compose.scale.yaml: replicas behind nginx) on a machine without Docker Hub access
# (and without a running Docker engine). It runs docker/smoke.py, where the steps and checks are
# (`python3 docker/smoke.py --help`; docker/README.md#smoke-test):
#
#   sudo bash docker/smoke-test.sh
#
# Environment (all optional):
#   CTM_HOST_PORT       host port to publish (default 8000; a free one if 8000 is taken)
#   CTM_TORCH_WHEEL     CPU torch wheel to build with (default /opt/wheels/torch-*+cpu-cp311-*.whl;
#                       none found: torch comes from the CPU wheel index instead)
#   CTM_DOCKER_ROOT     dockerd data root, kept between runs (default /var/lib/ctm-docker)
#   CTM_DOCKER_EXEC     dockerd exec root; socket and pidfile go beside it (default /run/ctm-docker)
#   CTM_ROOTFS_CACHE    cached debootstrap tarball (default /var/cache/ctm-serve-docker/bookworm-rootfs.tar)
#   CTM_DEBIAN_MIRROR   debootstrap mirror (default http://deb.debian.org/debian)
#   CTM_HEALTH_TIMEOUT  seconds to wait for "healthy" (default 240)
#   CTM_KEEP_DOCKERD=1  leave the dockerd this script started running
#   CTM_COMPOSE         compose command (default: "docker compose" if present, else docker-compose)
#   CTM_SMOKE_SCALE=0   skip the replicas behind nginx
#   CTM_SMOKE_REPLICAS  replicas behind nginx (default 2)
#   CTM_SMOKE_POLL_S    CTM_RELOAD_POLL_S of those replicas (default 2)
#   CTM_SMOKE_KILL=0    skip the replica kill under load
#   DOCKER_HOST         use this engine instead of starting one (it is never stopped)
#
# Exit status: 0 passed; 1 a check failed; 130/143 interrupted (SIGINT/SIGTERM), after the clean-up.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# What has to be shell: a python3 to run it (standard library only; Debian bookworm has 3.11).
if ! command -v python3 >/dev/null 2>&1; then
    echo "smoke-test.sh: no python3; apt-get install python3" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null
fi
# -u: its lines and those of the commands it runs arrive in order when the output is piped (CI).
exec python3 -u "$here/smoke.py" "$@"
