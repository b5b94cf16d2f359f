"""Duplicates, leaks, label errors and outliers found in a feature set, and the audit pages."""
