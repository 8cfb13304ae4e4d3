# syntax=docker/dockerfile:1
# One image for the operator (`mobackup operator`) and the backup/restore Job agent
# (`mobackup agent`), and usable as the plain CLI (`docker run IMAGE list --repo s3://...`).
#
#   docker build -t mo-backup-operator:0.1.0 .
#
# Dependencies are pinned by deploy/requirements.lock (generated from the tested virtualenv by
# deploy/gen-requirements-lock). tests/ship/test_image.py runs the same wheel build and offline
# install in a clean virtualenv and checks this file statically (no Docker engine in CI).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: every dependency and the project as wheels ---------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Compilers only for a dependency without a wheel for this platform; never in the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY deploy/requirements.lock /wheels/requirements.lock
RUN pip wheel --wheel-dir /wheels -r /wheels/requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- final: the wheels installed offline into a venv, no build tools -----------------------------
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/mobackup/bin:$PATH
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/mobackup \
 && /opt/mobackup/bin/pip install --no-index --find-links /wheels \
      -r /wheels/requirements.lock /wheels/mo_backup_operator-*.whl \
 && /opt/mobackup/bin/pip check \
 && groupadd --gid 65532 mobackup \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mobackup
LABEL org.opencontainers.image.title="mo-backup-operator" \
      org.opencontainers.image.description="Physical backup and restore of MatrixOne: CLI, Kubernetes operator and Job agent" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /tmp
# Numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["mobackup"]
CMD ["--help"]
