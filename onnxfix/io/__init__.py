"""Input/output at the edges: safe model loading, image loading and preprocessing, labels."""
