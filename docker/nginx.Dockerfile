# ctm-serve-nginx: nginx as the load balancer in front of the ctm-serve replicas
# (docker/compose.scale.yaml). Debian's nginx-light with docker/nginx.conf, run as www-data.
#
# Build from this folder (docker/; docker/.dockerignore keeps the context to nginx.conf):
#
#   docker build -f nginx.Dockerfile -t ctm-serve-nginx:latest .
#
# Build arguments:
#   BASE_IMAGE  A Debian bookworm image (default debian:bookworm-slim), as for docker/Dockerfile;
#               the smoke test passes its locally made debootstrap image.

ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive

# The master process runs unprivileged too, so it needs its temp folders (/var/lib/nginx) and
# log folder to be its own; the pid file goes to /tmp (nginx.conf).
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends nginx-light; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    rm -f /etc/nginx/sites-enabled/default; \
    chown -R www-data:www-data /var/lib/nginx /var/log/nginx; \
    nginx -v

COPY nginx.conf /etc/nginx/nginx.conf

USER www-data
# As the user that runs it (the check writes the pid file, which root would then own).
RUN nginx -t -q && rm -f /tmp/nginx.pid
EXPOSE 8000

# nginx itself, not a replica: the replicas have their own healthchecks. bash's /dev/tcp,
# because the image has no HTTP client.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /nginx-health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# SIGQUIT: nginx's graceful stop (in-flight requests finish); SIGTERM would drop them.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
