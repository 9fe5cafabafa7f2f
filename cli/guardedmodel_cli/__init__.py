"""The `guardedmodel` command line: one entry point, subcommands load their package lazily."""
