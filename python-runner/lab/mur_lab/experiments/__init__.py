"""Reproduction of Kirtas et al. (2024) through the mur server: `python -m mur_lab.experiments.reproduce`."""
