"""Private pieces of the real-server test harness; the public face is `resultstore.testing`.

Layers, top to bottom: `_launcher` (owns everything) -> `_sentinel` -> `_server` (one server
handle) -> `_process` / `_docker` (how a server runs) and `_config` / `_tls` / `_ports` (what
it runs with). Nothing here imports pytest; `redis`, `trustme` and `testcontainers` are
imported inside the functions that need them, so loading the pytest plugin stays cheap.
"""
