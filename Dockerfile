# syntax=docker/dockerfile:1
# One image for both capinfer processes:
#   the operator (default):  docker run capinfer:0.1.0
#   the sidecar:             docker run --entrypoint capinfer-sidecar capinfer:0.1.0
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

# --- builder: build capinfer's wheel and install it, with its dependencies, into a venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/capinfer
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY node/ node/
COPY cli/ cli/
# Build a wheel first so the final venv holds an installed package, never the source tree.
# pip leaves the venv at the end: the final stage installs nothing.
RUN /opt/capinfer/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/capinfer/bin/pip install /wheels/capinfer-*.whl \
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
