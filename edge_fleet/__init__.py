"""edgekit fleet-server components."""
