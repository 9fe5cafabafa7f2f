# One image for the operator and the guard sidecar: `guardedmodel operator`
# and `guardedmodel sidecar`. torch is not in it: fitting guard artifacts is
# an offline step (`pip install 'guardedmodel[fit]'`), never on the request path.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY sidecar sidecar
COPY cli cli
COPY testground testground
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin guardedmodel
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Runs as non-root with a read-only root filesystem; writable paths
# (audit log, review spool) are volumes the operator mounts.
USER 10001
EXPOSE 8080 8081 9090
ENTRYPOINT ["guardedmodel"]
CMD ["operator"]
