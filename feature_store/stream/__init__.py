"""Real-time features: events on Redis Streams, applied to stream features server-side, exactly once."""
