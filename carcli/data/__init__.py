"""Data sets: on-disk layouts, class-name taxonomy, images and transforms."""
