"""One module per CLI command; each has NAME, HELP, add_arguments(parser) and main(args) -> int."""
