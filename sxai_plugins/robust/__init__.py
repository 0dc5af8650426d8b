"""Robustness (as ``captum.robust``): adversarial attacks (:mod:`.adversarial`) and their detection
by semantic probabilities (:mod:`.detection`).

Only the score names live here, so that the CLI can offer them without importing torch.
"""

SCORES: tuple[str, ...] = ("gap", "paper")
"""Detection scores: ``gap`` (confidence beyond the semantic evidence) and ``paper`` (its rule as a score)."""
