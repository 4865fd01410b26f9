"""Benchmark placeholder replaced below."""
def add_bench_arguments(parser):
    pass
