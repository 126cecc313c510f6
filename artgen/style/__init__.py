"""Style transfer methods, one file per method."""
