"""Audio branch: GTZAN-style features, mel spectrograms, and the models over them."""
