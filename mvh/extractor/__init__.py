"""Slides, tissue detection, tiling, backbones (models/), preprocessing and batch extraction."""
