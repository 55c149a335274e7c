"""Reproduction of Kirtas et al. (2024) through the mur server: `python -m mur.experiments.reproduce`."""
