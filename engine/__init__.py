"""Shared machinery used by every branch and the fusion head: trainer, evaluation, run folders."""
