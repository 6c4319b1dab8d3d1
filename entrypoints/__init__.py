"""Click commands: parse options, call :mod:`mia`, print results. One module per entry point."""
