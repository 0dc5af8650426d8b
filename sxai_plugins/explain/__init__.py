"""Step 5, words: trust sentences from semantic probabilities, and the explanation templates that render them."""
