"""What operators look at: freshness (including what online holds) and missed deadlines."""
