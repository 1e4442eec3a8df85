"""Experiments: configs plus the code that runs them end to end and writes results."""
