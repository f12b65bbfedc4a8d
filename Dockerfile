# syntax=docker/dockerfile:1.7
#
# probewatch sidecar image: `probewatch serve` is the entrypoint.
#
#   docker build -t probewatch:0.1.0 .                                    # CPU (default, ~1 GB)
#   docker build --build-arg VARIANT=cuda -t probewatch:0.1.0-cuda .       # CUDA base + CUDA torch
#
# Build arguments
#   VARIANT           cpu | cuda: picks the base stage and the torch wheel index below.
#   PYTHON_IMAGE      base of the cpu variant.
#   CUDA_IMAGE        base of the cuda variant (torch's CUDA wheels bring cuBLAS/cuDNN themselves;
#                     the base provides the NVIDIA container-runtime environment and cudart).
#   TORCH_VERSION     the torch release, installed before probewatch: a bare `torch` requirement
#                     resolved from PyPI pulls the multi-GB CUDA build, which the cpu variant avoids.
#   TORCH_INDEX_URL   override the wheel index (default: PyTorch's cpu or cu128 index per VARIANT).
#   PREFETCH_REFERENCE_MODEL  true bakes the reference model (SmolLM2-135M-Instruct, ~540 MB as
#                     safetensors) into /models/smollm2-135m-instruct. Off by default: weights are
#                     mounted (`--model /models/<folder>`) or fetched into the PROBEWATCH_HOME
#                     volume by an init container running `probewatch models fetch`.
#
# What is inside: a virtualenv at /opt/probewatch with torch and probewatch (its shipped probe
# bundles are package data under probewatch/probes/shipped/), and /usr/local/bin/probewatch-healthcheck
# (a gRPC health check; see deploy/docker/healthcheck.py). Runs as uid/gid 10001, writes only to
# PROBEWATCH_HOME=/var/lib/probewatch (a volume) and /tmp. Ports: 50051 gRPC, 9400 /metrics.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# Base stages: one per variant. Builder and runtime share the base, so the virtualenv's
# interpreter path (/usr/local/bin/python3 or /usr/bin/python3) is the same in both.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
# Builder: the virtualenv with torch first, then probewatch from this source tree.
# ---------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM base-${VARIANT} AS builder
ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ARG PREFETCH_REFERENCE_MODEL=false
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/probewatch \
    PATH=/opt/probewatch/bin:$PATH
RUN python3 -m venv /opt/probewatch
SHELL ["/bin/sh", "-eu", "-c"]
# Torch before anything that depends on it, from the index that matches the variant.
RUN index="${TORCH_INDEX_URL}"; \
    if [ -z "$index" ]; then \
      case "${VARIANT}" in \
        cpu)  index=https://download.pytorch.org/whl/cpu ;; \
        cuda) index=https://download.pytorch.org/whl/cu128 ;; \
        *)    echo "VARIANT must be cpu or cuda, got '${VARIANT}'" >&2; exit 1 ;; \
      esac; \
    fi; \
    pip install --index-url "$index" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY probewatch ./probewatch
COPY probes ./probes
COPY proto ./proto
COPY server ./server
COPY training ./training
# A regular (non-editable) install: the source tree is not copied into the runtime stage.
# The check fails the build if the shipped bundles did not land as package data.
RUN pip install . \
    && python -c "import importlib.resources as r; p = r.files('probewatch.probes') / 'shipped'; assert p.is_dir(), p" \
    && probewatch --version
RUN mkdir -p /opt/models; \
    if [ "${PREFETCH_REFERENCE_MODEL}" = "true" ]; then \
      PROBEWATCH_HOME=/tmp/probewatch-home probewatch models fetch; \
      mv /tmp/probewatch-home/models/* /opt/models/; \
      rm -rf /tmp/probewatch-home; \
    fi

# ---------------------------------------------------------------------------------------------
# Runtime: the virtualenv, the health check, a non-root user. No compilers, no pip cache.
# ---------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="probewatch" \
      org.opencontainers.image.description="probewatch sidecar: live deception/refusal/alignment-faking probes on an LLM's residual stream" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.probewatch.variant="${VARIANT}"
RUN groupadd --system --gid 10001 probewatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/probewatch --shell /usr/sbin/nologin probewatch \
    && mkdir -p /var/lib/probewatch /bundles \
    && chown 10001:10001 /var/lib/probewatch
COPY --from=builder /opt/probewatch /opt/probewatch
COPY --from=builder /opt/models /models
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/probewatch-healthcheck
ENV VIRTUAL_ENV=/opt/probewatch \
    PATH=/opt/probewatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROBEWATCH_HOME=/var/lib/probewatch \
    HF_HOME=/var/lib/probewatch/hf
VOLUME ["/var/lib/probewatch"]
WORKDIR /var/lib/probewatch
USER 10001:10001
EXPOSE 50051 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["probewatch-healthcheck", "--address", "127.0.0.1:50051", "--timeout", "4"]
ENTRYPOINT ["probewatch", "serve"]
# Inside a container 127.0.0.1 is unreachable from outside it, so the image binds all interfaces, and
# therefore requires a bearer token: mount a file of tokens (one per line, >= 16 characters, readable by
# uid 10001) at /etc/probewatch/auth/token, the path the Helm chart uses; without it the sidecar exits
# with "cannot read the auth token file". `probewatch serve` refuses a non-loopback --host with neither
# a token nor mutual TLS unless --allow-insecure is passed (pass your own arguments for mutual TLS).
# The Helm chart passes its own arguments (127.0.0.1 in sidecar mode).
CMD ["--host", "0.0.0.0", "--port", "50051", "--metrics-host", "0.0.0.0", "--metrics-port", "9400", \
     "--auth-token-file", "/etc/probewatch/auth/token"]
