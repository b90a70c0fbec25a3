# The jobgate gateway. Build: docker build -t jobgate/gateway:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY runtimes ./runtimes
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[s3,kubernetes]'

FROM python:3.11-slim
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
