"""Exported folders: made from runs (run.py) and described by their model cards (card.py)."""
