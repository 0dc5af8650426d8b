"""Step 1, common traits: genetic superpixel search, GAP traits, row-centred PCA, per-layer information."""
