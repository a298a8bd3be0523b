"""The `orchestrate` command line: thin click commands that call the SDK and render results."""
