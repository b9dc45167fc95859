"""Models on disk: finding checkpoints by name (and, later, the catalog and downloads)."""
