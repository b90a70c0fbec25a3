"""The jobgate command line: serve, invoke, and the other client commands."""
