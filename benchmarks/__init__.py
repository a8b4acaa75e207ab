"""Benchmarks of the router's pure logic (run as ``python -m benchmarks.<name>``)."""
