"""Benchmark scenarios: ``b<N>_<slug>.py`` modules, each with ``async def run(ctx: BenchContext) -> list[Row]``.

The runner (``python -m tests.bench``) discovers them by name, in order of N.
"""
