"""jobkit's benchmark suite (``python -m benchmarks``): lands with issue 7; nothing here yet."""
