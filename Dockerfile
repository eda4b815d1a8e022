# resumable: a tus 1.0 resumable upload server.
#
#   docker build -t resumable .
#   docker run -p 1080:1080 -v uploads:/data resumable
#
# Every setting is an environment variable (RESUMABLE_REDIS_URL, RESUMABLE_MAX_SIZE, ...);
# see the Configuration section of README.md. .dockerignore keeps the build context
# to what is copied below.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The dependencies at exactly the versions the test suite runs (body.py relies on
# gunicorn's internals), checked against their hashes. A layer of their own, so a
# change to the code does not reinstall them.
COPY deploy/requirements.txt ./
RUN pip install --require-hashes -r requirements.txt
# Then the package alone (--no-deps: no dependency is resolved here); pip check
# fails the build if the pinned versions no longer satisfy pyproject.toml.
COPY pyproject.toml README.md LICENSE ./
COPY resumable ./resumable
RUN pip install --no-deps . \
    && pip check \
    && rm -rf /app/build /app/*.egg-info

# Run unprivileged; the data directory is owned by that user so a fresh named
# volume mounted on /data inherits the ownership.
RUN groupadd --system --gid 1000 resumable \
    && useradd --system --uid 1000 --gid resumable --home-dir /data --no-create-home resumable \
    && mkdir -p /data \
    && chown resumable:resumable /data

ENV RESUMABLE_DATA_DIR=/data \
    RESUMABLE_PORT=1080
VOLUME ["/data"]
EXPOSE 1080
USER resumable
WORKDIR /data

CMD ["resumable", "serve", "--host", "0.0.0.0"]
