"""Hostile inputs: each ends in one clear sentence or a typed error, never a traceback."""
