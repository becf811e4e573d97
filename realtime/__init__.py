"""realtime app."""
