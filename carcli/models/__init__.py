"""Backbones (registry), heads and weight loading."""
