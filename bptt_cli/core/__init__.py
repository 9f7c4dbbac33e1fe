"""The numerical core: pure NumPy, imports nothing from the CLI, file or terminal layers."""
