# jwtproxy container image.
#
#   docker build -t jwtproxy .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#       -v "$PWD/config.yaml:/etc/jwtproxy/config.yaml:ro" --read-only --tmpfs /tmp jwtproxy
#
# Configuration: the image reads /etc/jwtproxy/config.yaml. Mount it read-only (a file, or a
# Kubernetes ConfigMap volume at /etc/jwtproxy). Inside a container set
# `admin.listen: 0.0.0.0:9090` so that probes and Prometheus can reach /healthz, /readyz and
# /metrics, and keep `server.listen` on 0.0.0.0:8080.
#
# Read-only root filesystem: with one worker nothing is written at run time
# (PYTHONDONTWRITEBYTECODE; bytecode is compiled at install). With `server.workers` > 1 the
# workers keep their metrics (prometheus-client multiprocess mode) in PROMETHEUS_MULTIPROC_DIR
# if set, else in a private directory under /tmp: mount a writable tmpfs at /tmp
# (`docker run --read-only --tmpfs /tmp`; an emptyDir in Kubernetes). Without one it exits
# at start with a message that says so.
#
# Built and run for real by deploy/container-test.sh (podman; see docs/operations.md).
#
# The proxy runs as PID 1 and handles SIGTERM (drain for `server.graceful_timeout`) and SIGHUP
# (reload) itself, so no init shim is needed.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel needs; .dockerignore keeps the rest of the tree out of the context.
# pip compiles the installed modules to bytecode, so nothing is compiled (written) at run time.
COPY pyproject.toml README.md ./
COPY jwtproxy/ ./jwtproxy/
# pip and setuptools are needed only here: removed from the venv before it is copied.
RUN python -m venv /opt/jwtproxy \
    && /opt/jwtproxy/bin/pip install --no-cache-dir ".[fast]" \
    && /opt/jwtproxy/bin/python -m pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="jwtproxy" \
      org.opencontainers.image.description="Async JWT-validating reverse proxy (Amazon Cognito, any OIDC issuer)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/jwtproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric UID/GID so that Kubernetes `runAsNonRoot` can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 jwtproxy \
    && useradd --system --uid 10001 --gid jwtproxy --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin jwtproxy \
    && mkdir -p /etc/jwtproxy
COPY --from=build /opt/jwtproxy /opt/jwtproxy
USER 10001:10001
# Relative paths in the config (jwks_file, ca_file) resolve beside it.
WORKDIR /etc/jwtproxy
# 8080: proxy (server.listen); 9090: admin — /metrics, /healthz, /readyz (admin.listen).
EXPOSE 8080 9090
# /healthz on the admin address the config names (admin.listen), not a fixed port. The OCI
# image format has no HEALTHCHECK: podman/buildah keep it only with `--format docker`.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "jwtproxy.healthcheck", "/etc/jwtproxy/config.yaml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["jwtproxy"]
CMD ["run", "-c", "/etc/jwtproxy/config.yaml"]
