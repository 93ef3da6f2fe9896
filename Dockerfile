# The gateway as an image. Build context is the repository root:
#
#   docker build -t inference-gateway:latest .
#
# `docker compose up` builds it (docker-compose.yml). It runs as root on purpose: it drives
# the host's Docker engine through the mounted socket, which is root-owned; see the README,
# "Quick start with Docker Compose", for what that grants and how to narrow it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# Dependencies first, in a layer keyed on pyproject.toml alone: editing the code does not
# reinstall them. The list is read from pyproject.toml itself (tomllib), so there is no
# requirements file to keep in sync. setuptools is the build backend of the next step,
# installed here so that step needs no network (--no-build-isolation). nvidia-ml-py (a
# small pure-Python binding) lets `autoscale.gpus: auto` ask NVML when the container is
# given the GPUs; without them it finds none and the gateway runs CPU replicas.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "setuptools>=77" nvidia-ml-py \
    && rm /tmp/requirements.txt

# The code: a regular (not editable) install into site-packages, then the sources go.
# README.md is the package's long description, which the build needs.
COPY README.md ./
COPY gateway/ gateway/
COPY backends/ backends/
COPY load/ load/
RUN pip install --no-deps --no-build-isolation . && cd / && rm -rf /src

WORKDIR /
EXPOSE 8080 9090

# Liveness of the client listener. Python, since slim images have no curl; the port is the
# one every shipped config listens on (change it here if yours differs).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# The config is mounted, never baked in: `-v ./config:/etc/gateway:ro`. The gateway handles
# SIGTERM itself (drain, then stop its replicas when the pool says `on_exit: stop`).
CMD ["gateway", "run", "--config", "/etc/gateway/gateway.yaml"]
