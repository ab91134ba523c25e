"""Sources: what transforms may read (tenant isolation of source tables) and expectations on their rows."""
