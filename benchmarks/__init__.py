"""resultstore benchmarks: the store against the raw redis-py floor and the peers, in one run.

``python -m benchmarks.run [--quick]`` (what ``make bench`` / ``make bench-quick`` run) starts a
throwaway ``redis-server`` and runs every scenario in a fresh subprocess that prints JSON; see
``benchmarks/README.md``. Modules imported by ``peer_arq`` (``_common``, ``producer``) depend
only on the standard library and ``redis``, because arq lives in its own venv (it pins
``redis<6``).
"""
