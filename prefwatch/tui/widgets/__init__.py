"""Widgets of the monitor: the braille chart, the cell panel, the grid of panels, the summary strip."""
