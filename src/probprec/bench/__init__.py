"""The benchmark harness: test problems, runner, results and the command line.

It uses :mod:`probprec` only through its public API, like any user would.
"""

__all__: list[str] = []  # the modules are imported by name (probprec.bench.orchestration, ...)
