# The jobgate gateway. Build: docker build -t jobgate/gateway:0.1.0 .
# BASE: the public image by default; the tests pass a stand-in built locally.
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY runtimes ./runtimes
# pip's cache outlives the layer: a rebuild after a code change downloads nothing again.
RUN --mount=type=cache,target=/root/.cache/pip pip wheel --wheel-dir /wheels '.[s3,kubernetes]'

FROM ${BASE}
RUN useradd --uid 10001 --create-home jobgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENV JOBGATE_HOST=0.0.0.0 JOBGATE_PORT=8080 JOBGATE_DATA_DIR=/home/jobgate/data
EXPOSE 8080
# API keys are required on a non-loopback bind: set JOBGATE_API_KEYS (hashes) or
# JOBGATE_API_KEYS_FILE. On Kubernetes set JOBGATE_EXECUTOR=kubernetes, JOBGATE_STORAGE=s3.
ENTRYPOINT ["jobgate"]
CMD ["serve"]
