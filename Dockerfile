# haproxy-docker-config as an image, to run beside haproxy with the Docker socket
# (docs/tool-as-a-container.md). For builders with a registry:
#     docker build -t haproxy-docker-config .
# PYTHON_IMAGE replaces the base of both stages: tests/test_image.py builds this file with
# the local stand-in of scripts/build-python-image.sh (no registry here) and runs the image it
# makes through the same checks as the one of scripts/build-image.sh (the same recipe from an
# mmdebstrap root: Python 3.11 on Debian 12, libaugeas0, these wheels, user 10001, entry point).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# python-augeas has no wheel on PyPI: build every wheel where the compiler is.
FROM ${PYTHON_IMAGE} AS wheels
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libaugeas-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
# The dependencies (and the metrics extra: a watcher in a container is where --metrics is used)
# first, from pyproject.toml alone, so that a change of the module rebuilds only its own wheel.
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["metrics"]))' >/src/requirements.txt \
    && pip wheel --no-cache-dir --use-pep517 -w /wheels -r /src/requirements.txt
COPY README.md LICENSE.txt MANIFEST.in haproxy_docker_config.py /src/
COPY man /src/man
COPY completion /src/completion
RUN pip wheel --no-cache-dir --use-pep517 --no-deps -w /wheels /src

FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends libaugeas0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 hdc \
    && useradd --uid 10001 --gid 10001 --home-dir /home/hdc --create-home --shell /usr/sbin/nologin hdc
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
LABEL org.opencontainers.image.title=haproxy-docker-config
# Non-root: give it the Docker socket's group with --group-add, and a config
# directory it may write (or run it with --user).
USER 10001:10001
# Exec form: the tool is PID 1 and gets docker stop's SIGTERM itself (--watch exits 0).
ENTRYPOINT ["haproxy-docker-config"]
CMD ["--help"]
