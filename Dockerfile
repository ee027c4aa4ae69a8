# haproxy-docker-config as an image, to run beside haproxy with the Docker socket
# (README: "The tool as a container"). For builders with a registry:
#     docker build -t haproxy-docker-config .
# scripts/build-image.sh builds the same image without a registry: the same Python
# 3.11 on Debian 12, libaugeas0, wheels of the package and its dependencies, user
# 10001 and entry point, but from a Debian root made by mmdebstrap instead of the
# python image. It is the one that is tested (tests/test_image.py); this file is not
# built here, as no registry is reachable.

# python-augeas has no wheel on PyPI: build every wheel where the compiler is.
FROM python:3.11-slim-bookworm AS wheels
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libaugeas-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md LICENSE.txt haproxy_docker_config.py /src/
RUN pip wheel --no-cache-dir --use-pep517 -w /wheels "/src[metrics]"

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends libaugeas0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 hdc \
    && useradd --uid 10001 --gid 10001 --home-dir /home/hdc --create-home --shell /usr/sbin/nologin hdc
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl
LABEL org.opencontainers.image.title=haproxy-docker-config
# Non-root: give it the Docker socket's group with --group-add, and a config
# directory it may write (or run it with --user).
USER 10001:10001
# Exec form: the tool is PID 1 and gets docker stop's SIGTERM itself (--watch exits 0).
ENTRYPOINT ["haproxy-docker-config"]
CMD ["--help"]
