"""Harnesses for tests and benchmarks (decoder fuzzing, a loopback Flower federation); not part of the installed package."""
