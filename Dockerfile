# syntax=docker/dockerfile:1
# One image for capinfer's processes:
#   the operator (default):  docker run capinfer:0.1.0
#   the sidecar:             docker run --entrypoint capinfer-sidecar capinfer:0.1.0
#   the node agent:          docker run --entrypoint capinfer-node-agent capinfer:0.1.0
# In a pod, `command: ["capinfer-sidecar"]` selects the sidecar (it replaces ENTRYPOINT).
#
# Build: docker build -t capinfer:0.1.0 .
# Without Docker or a registry: `make image` (image/build.sh: buildah, on a stand-in for
# the base made from Debian's packages; see that script).
#
# The base is pinned by tag only: its digest could not be resolved where this file was
# written (no registry access). Pin it by digest before publishing, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- builder: the image's distributions (core, operator, sidecar, node agent) and only
# their dependencies, pinned with hashes in image/requirements.lock (`make image-lock`).
# Not the development CLI (cli/), its test models or report rendering.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY image/requirements.lock image/build-requirements.lock image/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r image/build-requirements.lock \
    && python -m venv /opt/capinfer \
    && /opt/capinfer/bin/pip install --require-hashes --no-deps -r image/requirements.lock
COPY core/ core/
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY node/ node/
# Wheels first so the final venv holds installed packages, never the source tree; the
# locked setuptools builds them. `pip check`: the lock holds every dependency they declare.
# pip leaves the venv at the end: the final stage installs nothing.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels \
       ./core ./operator ./sidecar ./node \
    && /opt/capinfer/bin/pip install --no-index --no-deps /wheels/*.whl \
    && /opt/capinfer/bin/pip check \
    && /opt/capinfer/bin/pip uninstall --yes pip

# --- final: the venv and a non-root user, nothing else
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="capinfer" \
      org.opencontainers.image.description="Keep Triton GPU inference under a power cap: operator and sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID/GID (distroless's "nonroot"), the same the Helm chart runs as.
RUN groupadd --system --gid 65532 capinfer \
    && useradd --system --uid 65532 --gid 65532 \
       --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin capinfer
COPY --from=builder /opt/capinfer /opt/capinfer
# Bytecode was compiled at install time; the root filesystem may be read-only at run time.
ENV PATH=/opt/capinfer/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so the kubelet can verify `runAsNonRoot: true` without reading /etc/passwd.
USER 65532:65532
ENTRYPOINT ["capinfer-operator"]
