# tokenrelay: a small image that runs the proxy as an unprivileged user.
#   docker build -t tokenrelay .
# With no client keys the proxy is in protected mode: it serves loopback clients only, so a published port is not
# an open proxy on your upstream key (everyone else gets 403). Either give it keys, in a config file of your own:
#   docker run -p 8000:8000 -e OPENAI_API_KEY -e TEAM_A_KEY -v "$PWD/config.yaml:/etc/tokenrelay/config.yaml:ro" tokenrelay
# (with `auth: {keys: [{id: team-a, key: "${TEAM_A_KEY}"}]}` in it), or say explicitly that it is open:
#   docker run -p 8000:8000 -e OPENAI_API_KEY -e TOKENRELAY_AUTH_OPEN=true tokenrelay
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY providers ./providers
COPY middleware ./middleware
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --no-create-home tokenrelay
COPY --from=build /install /usr/local
COPY config.yaml /etc/tokenrelay/config.yaml
ENV TOKENRELAY_CONFIG=/etc/tokenrelay/config.yaml \
    TOKENRELAY_HOST=0.0.0.0 \
    TOKENRELAY_PORT=8000 \
    PYTHONUNBUFFERED=1
USER tokenrelay
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=1); sys.exit(0)"]
# Readiness for load balancers and Kubernetes: GET /readyz (503 while draining).
# SIGTERM starts tokenrelay's drain (server.drain_seconds, default 30): give `docker stop -t 35` (README, Shutdown).
STOPSIGNAL SIGTERM
CMD ["tokenrelay", "serve"]
