# One image for the operator and the guard sidecar: `guardedmodel operator`
# and `guardedmodel sidecar`. torch is not in it: fitting guard artifacts is
# an offline step (`pip install 'guardedmodel[fit]'`), never on the request path.
#
# BASE is any image with Python 3.11 and its venv module: python:3.11-slim by
# default, or the Debian bookworm image the test ground makes without a
# registry (docs/images.md). Both stages use the same BASE, so the virtualenv
# built in the first one finds the same interpreter in the second.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# A virtualenv rather than the system site-packages: Debian's Python is
# externally managed (PEP 668) and has no `pip` on PATH.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY sidecar sidecar
COPY cli cli
# No testground/: the local test cluster and the demo are not part of the runtime, and
# `guardedmodel cluster` / `demo` say so in the image, as `guardedmodel fit` does for the
# "fit" extra (torch, scipy) it lacks.
RUN pip install --no-cache-dir --disable-pip-version-check . \
 && pip uninstall --yes --disable-pip-version-check pip setuptools \
 # numpy's own test suite, never imported at run time.
 && find /opt/venv/lib/python3*/site-packages/numpy -type d -name tests -prune -exec rm -rf {} +

FROM ${BASE}
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin guardedmodel
# Only the finished virtualenv crosses over: no wheels, compilers or caches.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Runs as non-root with a read-only root filesystem; writable paths
# (audit log, review spool) are volumes the operator mounts.
USER 10001
EXPOSE 8080 8081 9090
ENTRYPOINT ["guardedmodel"]
CMD ["operator"]
