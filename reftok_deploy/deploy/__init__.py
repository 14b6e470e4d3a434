"""Orchestration above export/ and runtimes/: backend choice, export validation, parity and benchmarks."""
