"""Evaluations from stored embeddings: ST regression, classification, retrieval, survival."""
