"""The lowest layer: errors, default paths, atomic files, progress lines and text escaping. Standard library and numpy only."""
