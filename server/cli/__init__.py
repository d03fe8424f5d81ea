"""The `aiproc` console script: one module per command group, a thin layer over the client."""
