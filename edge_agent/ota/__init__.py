"""Over-the-air updates: protocol (shared with the fleet), transfer, A/B slots, install state machine."""
