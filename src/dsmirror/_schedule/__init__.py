"""Schedule: which source fetches which piece, when (the piece picker)."""
