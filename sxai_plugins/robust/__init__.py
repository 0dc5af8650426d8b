"""Robustness (as ``captum.robust``): adversarial attacks and their detection by semantic probabilities."""
