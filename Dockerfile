# One image for every Clarion service; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin clarion

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# The runtime dependencies only: no dev extras in the image.
RUN pip install . && rm -rf /src

USER clarion
WORKDIR /home/clarion

# Inside a container the services must listen beyond loopback.
ENV CLARION_INGEST_HOST=0.0.0.0 \
    CLARION_DISPATCHER_HOST=0.0.0.0 \
    CLARION_LOG_FORMAT=json

EXPOSE 8000 8001
CMD ["python", "-m", "services.ingest"]
