#!/usr/bin/env bash
# A multi-instance trial on one machine, no containers: Redis, and two gateway instances of the tutorial config
# (examples/) with 2 workers each, sharing their throttle counts.
#   instance A: ws://localhost:8082 (admin 127.0.0.1:9900, runs the echo backend on 8765)
#   instance B: ws://localhost:8083 (admin 127.0.0.1:9901)
# Needs redis-server (Debian: apt-get install redis-server) and the package installed with the redis extra:
#   python3 -m venv .venv && .venv/bin/pip install -q -e '.[redis]'
# Ctrl-C stops everything (the gateways drain first; press it twice to skip the drain).
set -euo pipefail
cd "$(dirname "$0")/.."
WSGATE=${WSGATE:-.venv/bin/wsgate}
REDIS_PORT=${REDIS_PORT:-6390}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$work/redis.log" &
pids+=($!)
for _ in $(seq 100); do  # until Redis says it is ready (or died: then say why)
  grep -q "Ready to accept connections" "$work/redis.log" && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "trial: redis-server did not start (port $REDIS_PORT; set REDIS_PORT):" >&2
    cat "$work/redis.log" >&2
    exit 1
  fi
  sleep 0.1
done
export WSGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

for instance in a b; do
  cp -r examples "$work/$instance"
  cat >"$work/$instance/gateway/gateway.yaml" <<YAML
kind: Gateway
name: trial-$instance
admin:
  host: 127.0.0.1
  port: $([ $instance = a ] && echo 9900 || echo 9901)
shutdown_grace: 5
state:
  backend: redis
  url: {env: WSGATE_REDIS_URL}
YAML
done
sed -i 's/port: 8082/port: 8083/' "$work/b/gateway/ports.yaml"
rm "$work/b/gateway/echo.yaml"  # one echo backend (instance A's) is enough

"$WSGATE" run "$work/a" --workers 2 &
pids+=($!)
"$WSGATE" run "$work/b" --workers 2 &
pids+=($!)
echo "trial: ws://localhost:8082 and ws://localhost:8083 share ServerTime's limit of 2 (Ctrl-C stops)" >&2
wait
