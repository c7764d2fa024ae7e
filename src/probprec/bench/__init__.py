"""The benchmark harness: test problems, runner, results and the command line.

It uses :mod:`probprec` only through its public API, like any user would.
"""
