"""Operator tools that start things: the demo, the benchmark, the load tests and the crash test."""
