"""Screens: the grid (default), one cell's charts, the stop confirmation and the key help."""
