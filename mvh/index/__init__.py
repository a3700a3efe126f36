"""The embedding store (LanceDB/Arrow) and vector indexes (FAISS). Knows no model."""
