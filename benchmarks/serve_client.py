"""The load client of benchmarks/serve.py, a process of its own: stdlib only, light as a separate client.

Reads a pickled job on stdin: {"host", "port", "clients", "max_seconds", "requests": [(method, path,
body, headers), ...]} with every body already built. `clients` threads each hold one keep-alive
`http.client` connection and send the requests in turn until all are sent or max_seconds pass. Writes
JSON on stdout: the latency of each request in ms, and this process's CPU seconds while sending.
"""

from __future__ import annotations

import http.client
import json
import pickle
import sys
import threading
import time
from typing import Any


def send_all(job: dict[str, Any]) -> dict[str, Any]:
    """Send the job's requests from its client threads: latencies (ms), CPU seconds, failures."""
    requests = iter(job["requests"])
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + job["max_seconds"]

    def client() -> None:
        connection = http.client.HTTPConnection(job["host"], job["port"], timeout=60)
        try:
            while time.monotonic() < deadline:
                with lock:
                    item = next(requests, None)
                if item is None:
                    return
                method, path, body, headers = item
                start = time.perf_counter()
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    if response.status >= 400:
                        failures.append(f"{method} {path}: {response.status} {data[:200]!r}")
                    latencies.append(elapsed)
        finally:
            connection.close()

    cpu = time.process_time()
    threads = [threading.Thread(target=client) for _ in range(job["clients"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "cpu_s": time.process_time() - cpu, "failures": failures}


if __name__ == "__main__":
    json.dump(send_all(pickle.load(sys.stdin.buffer)), sys.stdout)
