"""An OTLP/HTTP endpoint on loopback that takes every export and drops it: what tracing
costs the service with a collector that keeps up, without measuring the collector.

    python -m bench.otlp_sink [--port 4318]    # then, for the servers under load:
    python -m bench.ingest --peers none --compare REF \\
        --jobpool-env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318

It answers each POST with 200 and an empty body (an empty ExportTraceServiceResponse) and
counts the requests and bytes it took, printed when it stops (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_lock = threading.Lock()
_taken = {"requests": 0, "bytes": 0}


class _Drop(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(size)
        with _lock:
            _taken["requests"] += 1
            _taken["bytes"] += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, default=4318)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Drop)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(f"otlp sink: {_taken['requests']} exports, {_taken['bytes']} bytes dropped")


if __name__ == "__main__":
    main()
