"""Figures and tables for results: heatmaps, learning curves."""
