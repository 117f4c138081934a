"""Command-line entry points, one module per subcommand group (see moelab.cli)."""
