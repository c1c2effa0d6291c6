# SmartSocket server image.
#
#   docker build -t smartsocket .
#   docker run -p 8080:8080 smartsocket                      # the demo app
#   docker run -p 8080:8080 -v "$PWD:/app" smartsocket serve --app myapp:server
#
# Configure it with the SMARTSOCKET_* env vars (README, "Configuration"), e.g.
# -e SMARTSOCKET_API_KEYS=... -e SMARTSOCKET_MAX_CONNECTIONS=50000. docker stop sends SIGTERM:
# the server stops accepting, lets running handlers finish, closes clients with 1001.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Wheels of SmartSocket and of its dependencies, so the final stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[redis,nats]"

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SMARTSOCKET_HOST=0.0.0.0 \
    SMARTSOCKET_PORT=8080
RUN groupadd --system --gid 10001 smartsocket \
    && useradd --system --uid 10001 --gid smartsocket --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin smartsocket
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "smartsocket[redis,nats]" \
    && rm -rf /wheels
COPY deploy/healthcheck.py /usr/local/lib/smartsocket/healthcheck.py
WORKDIR /app
USER smartsocket:smartsocket
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python", "/usr/local/lib/smartsocket/healthcheck.py"]
ENTRYPOINT ["smartsocket"]
CMD ["serve"]
