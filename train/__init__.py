"""train app."""
