"""Cross-checks of this package against the authors' public code (issue #12); not installed."""
