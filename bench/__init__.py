"""Benchmarks of the price pipeline: ``make bench`` (``python -m bench [--quick]``).

Not tests: nothing here asserts a time. Each run prints one markdown report (command, machine, every
figure and how it was measured) and writes it to ``bench/results/latest.md`` (``quick.md`` with
``--quick``); the raw figures go beside it as JSON (not committed).
"""
