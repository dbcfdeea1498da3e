"""Earth embeddings: pretraining, embedding products, compression and their benchmark."""
