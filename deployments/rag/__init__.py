"""The RAG deployment: embeddings and the vector store, with their settings."""
