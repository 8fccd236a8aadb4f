"""Differential-privacy mechanisms and accountants."""
