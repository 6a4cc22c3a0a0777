"""The benchmark plugin of rabbitworker and what its consumers share (see README.md)."""
