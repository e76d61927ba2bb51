"""Measuring what was found: the particle table, size statistics, sub-pixel atom fits, and scores
against human labels (matching, truth readers, evaluation)."""
