# wsgate: the gateway image. The config is a mounted directory at /config (a ConfigMap in Kubernetes).
#   docker build -t wsgate .
#   docker run -v "$PWD/deploy/config:/config:ro" -e WSGATE_REDIS_URL=redis://redis:6379/0 -p 8082:8082 wsgate
FROM python:3.12-slim

WORKDIR /opt/wsgate
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY echo ./echo
COPY schemas ./schemas
# The README's install command with every runtime extra: shared state (redis), bcrypt/argon2 passwords (hashes),
# tracing (otel), the compiled message validator (fast-validation). tests/test_image_extras.py checks the list
# against pyproject.toml and that each feature's modules import.
RUN python3 -m venv .venv && .venv/bin/pip install -q -e '.[redis,hashes,otel,fast-validation]' && rm -rf /root/.cache \
    && useradd --system --uid 10001 --no-create-home wsgate
ENV PATH=/opt/wsgate/.venv/bin:$PATH PYTHONUNBUFFERED=1

USER 10001
# 8082: the Port in deploy/config; 9900: the admin listener (probes, metrics; keep it internal).
EXPOSE 8082 9900
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9900/healthz', timeout=2)"]
# SIGTERM drains (shutdown_grace); give `docker stop -t` more than shutdown_grace + shutdown_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsgate"]
CMD ["run", "/config"]
