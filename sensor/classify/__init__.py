"""Classifiers: plain functions and small caches that turn events into facts."""
