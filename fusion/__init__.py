"""Late fusion of the branches' cached outputs."""
