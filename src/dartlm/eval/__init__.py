"""Evaluation: benchmark readers, answer extraction, scoring, timing and reports."""
