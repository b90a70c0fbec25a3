"""jobgate: a function gateway running code in single-use, sandboxed workers."""
