# syntax=docker/dockerfile:1.7
#
# The audioguard worker image. One Dockerfile, two variants chosen by a build argument:
#
#   docker build -t audioguard:gpu .                        # CUDA (default): torch cu128 wheels
#   docker build -t audioguard:cpu --build-arg VARIANT=cpu .  # CPU: torch from the CPU wheel index
#
# Stages: os-<variant> (a pinned base with Python 3.11) -> builder (a venv with the project
# and its dependencies) -> worker (the base again, the venv copied in, a non-root user).
# The model artifact ships as package data (services/detector/artifacts/), so it is baked
# into the venv here; the worker checks its sha256 when it loads it and exits non-zero on a
# mismatch, and /readyz stays 503 until a warm-up inference has run (see docs/deploy.md).

# checkov:skip=CKV_DOCKER_7: every FROM is pinned, through the ARGs below (CUDA_IMAGE, PYTHON_IMAGE carry version tags); checkov cannot resolve an ARG in FROM.
ARG VARIANT=cuda
# The "base" flavour of the CUDA image (cudart and the driver hooks, ~250 MB) rather than
# "runtime": the torch 2.9.1 wheels bring their own cuBLAS/cuDNN/NCCL as nvidia-* wheels,
# so the runtime flavour would ship those libraries twice (~2.5 GB more).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG TORCH_VERSION=2.9.1

# ---------------------------------------------------------------- bases, one per variant
FROM ${CUDA_IMAGE} AS os-cuda
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu 22.04 ships Python 3.11 in universe; the project requires 3.11 exactly.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/bin/python3.11 /usr/local/bin/python3
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# the wheels index torch is installed from: the default PyPI wheels are the CUDA 12.8 build
ENV TORCH_INDEX_URL=https://pypi.org/simple

FROM ${PYTHON_IMAGE} AS os-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# os-${VARIANT} is one of the two stages above, not an image: hadolint cannot see that.
# hadolint ignore=DL3006
FROM os-${VARIANT} AS os
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------- builder
FROM os AS builder
ARG TORCH_VERSION
RUN python3 -m venv /opt/audioguard
ENV PATH=/opt/audioguard/bin:$PATH
# torch first, in its own layer: it is >90% of the image and changes far less often than
# the code, so a code change rebuilds only the small layers below.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}" "torchaudio==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY consumers ./consumers
COPY services ./services
COPY dlq ./dlq
COPY reporting ./reporting
COPY api ./api
# A regular (not editable) install: the venv is self-contained and /src is not copied on.
# Loading the shipped detector here fails the build when the baked artifact does not match
# its manifest's sha256 (the worker checks it again at every start).
RUN pip install . \
    && audioguard --help > /dev/null \
    && python -c "from services.detector import load_detector; load_detector(device='cpu')"

# ---------------------------------------------------------------- the worker
FROM os AS worker
ARG VARIANT
LABEL org.opencontainers.image.title="audioguard-worker" \
      org.opencontainers.image.description="Streaming detection of AI-generated audio (${VARIANT})"
RUN groupadd --system --gid 10001 audioguard \
    && useradd --system --uid 10001 --gid audioguard --home-dir /home/audioguard --create-home \
        --shell /usr/sbin/nologin audioguard \
    && install -d -o audioguard -g audioguard /srv/audio
# /srv/audio: file:// audio the worker may read (AUDIOGUARD_STORAGE__FILE_ROOTS); owned by the
# worker so that a named volume mounted there starts out writable (docker-compose.yml's demo).
COPY --from=builder /opt/audioguard /opt/audioguard
ENV PATH=/opt/audioguard/bin:$PATH \
    AUDIOGUARD_METRICS_PORT=9100 \
    AUDIOGUARD_DRAIN_SECONDS=20 \
    AUDIOGUARD_DEVICE=auto \
    AUDIOGUARD_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/audioguard
EXPOSE 9100
# Liveness of the process loop, from the worker's own HTTP endpoint; no curl in the image.
# start-period covers the model load and the warm-up inference (cold start, docs/deploy.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AUDIOGUARD_METRICS_PORT', '9100'), timeout=4)"]
# exec form: the worker itself is PID 1 and gets SIGTERM directly, which starts its graceful
# drain (AUDIOGUARD_DRAIN_SECONDS); a shell in between would swallow the signal.
ENTRYPOINT ["audioguard"]
CMD ["worker", "--transport", "kafka"]
