"""export app."""
