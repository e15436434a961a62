"""Image branch: covers → backbone → logits / embeddings."""
