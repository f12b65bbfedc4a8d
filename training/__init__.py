"""Offline training: activation extraction, probe estimators, evaluation, reports, datasets, SAEs."""
