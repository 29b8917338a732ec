"""How long `wsgate validate` takes on a large tree: 1,000 APIs and 1,000 applications.

    python benchmarks/validate_scale.py [--apis N] [--apps N] [--repeat R]

Generates the tree in a temporary directory (one file per API, one per
application, realistic chains and keys), then times ``check()`` in this
process and the full ``wsgate validate`` command in a fresh process (which
includes interpreter start and imports), and a running gateway's reload path:
``check()`` with a ``CheckCache`` of the unchanged tree and after one file
changed. Prints a table with wall time and CPU time (user + system, the
figure to trust on a shared machine); the targets are under 2 s for the
default size and under 15 s for 10,000 + 10,000.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

API = """\
# yaml-language-server: $schema=../../schemas/api.schema.json
kind: API
name: api-{i:04d}
version: "1.{v}"
description: Generated API number {i}.
path: /ws/api-{i:04d}/1.{v}
ports: [{port}]
upstream:
  endpoints:
    - url: ws://backend-{b}.internal:9000/streams/{i:04d}/
policies:
  - type: identify
    by: [api_key]
  - type: throttle
    max_connections: {limit}
  - type: log-invocation
    store_client_messages: true
"""

APP = """\
# yaml-language-server: $schema=../../schemas/application.schema.json
kind: Application
name: app-{i:04d}
description: Generated application number {i}.
identifiers:
  api_keys:
    - sha256:{key}
apis: [api-{a:04d}, api-{b:04d}]
"""

PORTS = """\
kind: Port
name: public
port: 8443
---
kind: Port
name: internal
port: 8082
host: 127.0.0.1
"""


def generate(root: Path, apis: int, apps: int) -> None:
    (root / "apis").mkdir(parents=True)
    (root / "applications").mkdir()
    (root / "ports.yaml").write_text(PORTS)
    for i in range(apis):
        text = API.format(i=i, v=i % 3, port="public" if i % 2 else "internal", b=i % 7, limit=10 + i % 90)
        (root / "apis" / f"api-{i:04d}.yaml").write_text(text)
    for i in range(apps):
        key = hashlib.sha256(f"key-{i}".encode()).hexdigest()
        text = APP.format(i=i, key=key, a=i % apis, b=(i * 7 + 1) % apis)
        (root / "applications" / f"app-{i:04d}.yaml").write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apis", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print the top functions of one check() run")
    args = parser.parse_args()

    from gateway.config import CheckCache, check

    def timed(run):
        """(wall s, CPU s of this process) of one call."""
        started, cpu = time.perf_counter(), time.process_time()
        value = run()
        return time.perf_counter() - started, time.process_time() - cpu, value

    with tempfile.TemporaryDirectory(prefix="wsgate-scale-") as tmp:
        root = Path(tmp) / "config"
        generate(root, args.apis, args.apps)
        if args.profile:
            import cProfile
            import pstats

            cProfile.runctx("check([root], env={})", globals(), {"check": check, "root": root}, "/tmp/validate.prof")
            pstats.Stats("/tmp/validate.prof").sort_stats("cumulative").print_stats(25)

        rows = []
        runs = [timed(lambda: check([root], env={})) for _ in range(args.repeat)]
        assert runs[-1][2].ok, [d.headline() for d in runs[-1][2].diagnostics[:5]]
        rows.append(("check() in process", runs))

        runs = []
        for _ in range(args.repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "gateway", "validate", str(root), "--format", "json"],
                capture_output=True,
                check=False,
            )
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            runs.append((wall, cpu, proc))
            assert proc.returncode == 0, proc.stdout[-2000:]
        rows.append(("wsgate validate (new process)", runs))

        cache = CheckCache()
        check([root], env={}, cache=cache)
        runs = [timed(lambda: check([root], env={}, cache=cache)) for _ in range(args.repeat)]
        assert cache.parsed == 0 and runs[-1][2].ok
        rows.append(("reload, tree unchanged", runs))
        changed = root / "apis" / "api-0000.yaml"
        runs = []
        for i in range(args.repeat):
            changed.write_text(changed.read_text().replace("max_connections: ", f"max_connections: {i + 1}", 1))
            runs.append(timed(lambda: check([root], env={}, cache=cache)))
            assert cache.parsed == 1 and runs[-1][2].ok
        rows.append(("reload, one file changed", runs))

    documents = args.apis + args.apps + 2
    print(f"{args.apis} APIs, {args.apps} applications, {documents} documents, best/worst of {args.repeat}")
    print(f"{'what':<32}{'best s':>10}{'worst s':>10}{'CPU s':>10}{'docs/s':>10}")
    for name, runs in rows:
        walls = [wall for wall, _, _ in runs]
        cpu = min(cpu for _, cpu, _ in runs)
        print(f"{name:<32}{min(walls):>10.2f}{max(walls):>10.2f}{cpu:>10.2f}{documents / min(walls):>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
