"""`python -m moelab ...` runs the command line."""

from moelab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
