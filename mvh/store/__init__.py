"""The embedding store: one LanceDB database of tile embeddings, where it lives, and what it holds."""
