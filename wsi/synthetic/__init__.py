"""Synthetic slides with known tissue and mpp (tests, benchmarks) and the demo cohort."""
