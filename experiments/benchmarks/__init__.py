"""Benchmarks: env steps/s, verifier latency, and the kill-and-resume check of rsd-train."""
