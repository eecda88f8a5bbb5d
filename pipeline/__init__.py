"""Distill-and-export pipeline for face recognition: ViT teacher -> mobile CNN student -> deployable backends."""

__version__ = "0.1.0"
