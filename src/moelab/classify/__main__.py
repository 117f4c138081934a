"""``python -m moelab.classify train-classifier ...``."""

from moelab.classify.commands import main

raise SystemExit(main())
