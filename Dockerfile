# otlp-meter container image.
#
#   docker build -t otlp-meter:0.1.0 .
#   docker run -p 4317:4317 -p 4318:4318 -p 8080:8080 -p 8888:8888 -e OPENMETER_TOKEN=... otlp-meter:0.1.0
#
# Two stages: the build stage installs the pinned runtime dependencies and the project's wheel into a
# virtualenv; the runtime stage copies only that virtualenv (same path: virtualenvs are not relocatable).
# tests/deploy/test_image.py performs the build stage's steps in a temporary virtualenv and starts the
# service with this file's ENTRYPOINT/CMD, so keep the steps plain: ENV, WORKDIR, COPY and RUN using
# $VENV and relative paths.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV VENV=/opt/otlp-meter \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv "$VENV"
# Dependencies first (their layer is reused until requirements.txt changes); wheels only, no compiler.
COPY requirements.txt ./
RUN "$VENV/bin/pip" install --no-cache-dir --only-binary=:all: --requirement requirements.txt
# A C compiler for the rules engine's optional extension (otlp_meter/_native.c; this stage only:
# the runtime stage gets the built wheel's venv, not the compiler). Without one it runs in Python.
# Unpinned on purpose: whatever gcc the base image's Debian release has; it only builds the wheel.
# hadolint ignore=DL3008
RUN command -v gcc >/dev/null || (apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*)
COPY pyproject.toml setup.py README.md ./
COPY rules ./rules
COPY otlp_meter ./otlp_meter
# The project as a wheel (not an editable install); the shipped rule packs travel inside it.
RUN "$VENV/bin/pip" wheel --no-cache-dir --no-deps --wheel-dir dist . \
    && "$VENV/bin/pip" install --no-cache-dir --no-deps --no-index dist/*.whl \
    && "$VENV/bin/python" -I -c "import otlp_meter.native as n; assert n.available(), 'C extension not built'"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="otlp-meter" \
      org.opencontainers.image.description="Usage-metering collector: OpenTelemetry in, durable CloudEvents out to OpenMeter" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 otlp-meter \
    && useradd --system --uid 10001 --gid otlp-meter --no-create-home --home-dir /var/lib/otlp-meter \
       --shell /usr/sbin/nologin otlp-meter \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/otlp-meter
COPY --from=build /opt/otlp-meter /opt/otlp-meter
COPY deploy/docker/config.yaml /etc/otlp-meter/config.yaml
ENV PATH=/opt/otlp-meter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/otlp-meter
# The queue: mount a persistent volume here (it *is* the buffer during an OpenMeter outage).
VOLUME ["/var/lib/otlp-meter"]
# 4317 OTLP/gRPC, 4318 OTLP/HTTP, 8080 events API (CloudEvents over HTTP), 8888 /metrics /healthz /readyz
EXPOSE 4317 4318 8080 8888
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-I", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/healthz', timeout=4)"]
# Exec form: otlp-meter is PID 1 and receives SIGTERM itself (it drains, then exits 0).
ENTRYPOINT ["otlp-meter"]
CMD ["run", "--config", "/etc/otlp-meter/config.yaml"]
