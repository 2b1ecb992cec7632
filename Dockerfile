# dicomcloud image: one image, every service; the subcommand picks the service.
#
#   docker build -t dicomcloud .
#   docker run --rm -p 8080:8080 -p 11112:11112 dicomcloud            # `up`: all services, embedded stores
#   docker run --rm dicomcloud consumer --bus kafka://… --database-url postgresql://…
#
# The distributed stack (Kafka, PostgreSQL, Redis, one container per service) is
# deploy/docker-compose.yml; see deploy/README.md.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a venv -------------------------
FROM ${PYTHON_IMAGE} AS build

# Optional extras, e.g. --build-arg EXTRAS=codecs (pylibjpeg, openjpeg, JPEG-LS).
ARG EXTRAS=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1

RUN python -m venv /opt/dicomcloud
WORKDIR /src
# Every dependency (confluent-kafka, asyncpg, orjson, numpy, pgserver, uvloop, …) has a
# manylinux wheel for CPython 3.11, so no compiler is needed.
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/dicomcloud/bin/pip install ".${EXTRAS:+[$EXTRAS]}"

# --- runtime ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="dicomcloud" \
      org.opencontainers.image.description="A scalable cloud DICOMweb archive: C-STORE and STOW-RS in, QIDO-RS and WADO-RS out." \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid/gid, so that a data volume keeps one owner across image rebuilds.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" dicomcloud \
 && useradd --system --uid "${UID}" --gid dicomcloud --home-dir /var/lib/dicomcloud \
            --shell /usr/sbin/nologin dicomcloud \
 && mkdir -p /data /var/lib/dicomcloud \
 && chown dicomcloud:dicomcloud /data /var/lib/dicomcloud

COPY --from=build /opt/dicomcloud /opt/dicomcloud

# The data dir (files under ROOT = /data/files; with the embedded defaults of `up` also
# the bus journal and the PostgreSQL cluster) is /data. A named volume mounted there
# starts out owned by the dicomcloud user, because the image's /data is.
ENV PATH=/opt/dicomcloud/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DICOMCLOUD_DATA_DIR=/data

USER dicomcloud:dicomcloud
WORKDIR /var/lib/dicomcloud
VOLUME ["/data"]

# 8080: DICOMweb (server, up); 11112: DICOM C-ECHO / C-STORE (storescp, up)
EXPOSE 8080 11112

# dicomcloud stops cleanly on SIGTERM (docker stop), the default stop signal.
# On 0.0.0.0 the server refuses to start without authentication: run with
# -e DICOMCLOUD_AUTH_ISSUER=https://<your OpenID provider>/… (or, on a trusted network
# only, -e DICOMCLOUD_ALLOW_ANONYMOUS=true).
ENTRYPOINT ["dicomcloud"]
CMD ["up", "--http-host", "0.0.0.0"]
