"""Pictures: feature inversion (step 2: traits back to images), plots, radar maps and the HTML report."""
