"""Private helpers shared by every layer: errors, atomic file output, bundled asset paths."""
