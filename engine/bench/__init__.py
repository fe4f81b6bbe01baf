"""Benchmarks: standalone commands that warm up, repeat, synchronise and report medians as JSON."""
