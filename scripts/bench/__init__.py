"""Benchmarks: each measures one thing and prints a table (docs/benchmarks.md)."""
