"""Small helpers every stage may use: optional-dependency checks, logging, atomic files."""
