"""Benchmarks (not tests): timings are printed and written as JSON, never asserted."""
