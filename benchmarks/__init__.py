"""The plain reference loops that ``advinf bench`` times advinf against (installed as advinf_benchmarks)."""
