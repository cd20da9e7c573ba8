"""``make chaos``: scripted faults against a real multi-process stack, one table row per fault (see scenarios.py)."""
