# The archive as a container: `docker compose up` (docker-compose.yaml) or
#   docker build -t dicomweb-archive . && docker run -p 8042:8042 -p 11112:11112 -v pacs:/data dicomweb-archive
# Slim Python base (pydicom's pixel codecs install as manylinux wheels, no compiler needed), a non-root
# user owning the data volume, and a health check on /health.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/archive
COPY pyproject.toml README.md ./
COPY app ./app
COPY dimse_bridge ./dimse_bridge
COPY migrations ./migrations
RUN pip install . \
    # The OHIF Viewer served at /viewer: fetched from the npm registry, integrity checked, into the image
    # (/usr/local/share/dicomweb-archive/viewer), so an upgraded image brings its own.
    && python -m app viewer install \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home archive \
    && mkdir -p /data /storage \
    && chown archive:archive /data /storage

USER archive
# Inside the container the archive listens on every interface; docker-compose.yaml publishes the ports.
ENV DATA_DIR=/data \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8042 \
    DIMSE_HOST=0.0.0.0 \
    DIMSE_PORT=11112 \
    LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8042 11112

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8042') + '/health', timeout=4)"]

# SIGTERM (docker stop) shuts down cleanly through the app's lifespan.
CMD ["python", "-m", "app", "serve"]
