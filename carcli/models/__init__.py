"""Models: backbones (registry), heads, weight loading, and models built from checkpoints (builder: plain,
pruned, ensemble)."""
