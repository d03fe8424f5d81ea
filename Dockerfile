# syntax=docker/dockerfile:1
#
# aiproc as a container: `docker build -t aiproc .`. The default command serves
# on 0.0.0.0:50051 with the built-in offline provider, and aiproc refuses a
# non-loopback address without TLS and API keys (or client certificates). Mount
# a config file with [server] tls_* and [auth] api_keys and point AIPROC_CONFIG
# at it; just to try it out on your own machine:
# `docker run -e AIPROC_SERVER_ALLOW_INSECURE=true -p 127.0.0.1:50051:50051 aiproc`.
# Pass provider keys at run time, never bake them into the image. The
# HEALTHCHECK below speaks plaintext: with TLS on, replace it (or rely on the
# orchestrator's own gRPC probe with the CA).

# ---- builder: builds the aiproc wheel and installs it into a venv ----------
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen/python gen/python
COPY server server
COPY client client

RUN python -m venv /opt/aiproc \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/aiproc/bin/python -m pip install --no-cache-dir /wheels/aiproc-*.whl

# ---- runtime: the venv only, run by an unprivileged user -------------------
FROM python:3.11.14-slim-bookworm

ENV PATH=/opt/aiproc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 aiproc \
    && useradd --system --uid 10001 --gid aiproc --no-create-home \
        --home-dir /var/lib/aiproc --shell /usr/sbin/nologin aiproc \
    && mkdir -p /var/lib/aiproc \
    && chown aiproc:aiproc /var/lib/aiproc

COPY --from=builder /opt/aiproc /opt/aiproc

USER 10001:10001
WORKDIR /var/lib/aiproc
VOLUME ["/var/lib/aiproc"]
EXPOSE 50051

# Asks the standard gRPC health service (grpc.health.v1) for the overall
# status; any answer but SERVING, or no answer within 3 s, is unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/opt/aiproc/bin/python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(service=''), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["aiproc"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--data-dir", "/var/lib/aiproc"]
