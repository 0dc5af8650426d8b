"""Steps 3 and 4: semantic spaces (a concept's channels and probe) and the semantic probability P_s they give."""
