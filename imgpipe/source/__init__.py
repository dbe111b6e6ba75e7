"""Source in: what the file is, read safely before anything opens it."""
