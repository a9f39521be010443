"""Retrieval-augmented generation: store, chunking, retrieval (see the RAG issue)."""
