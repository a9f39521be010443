"""Retrieval-augmented generation: parsing, chunking, embedding, the store and retrieval."""

if __name__ != "tierline.rag":  # the folder rag/ installs as tierline.rag only
    raise ImportError(f"import tierline.rag, not {__name__} (`pip install -e .` maps rag/ to it)")
