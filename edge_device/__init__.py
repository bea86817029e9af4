"""Host side of provisioning: probe, set up and flash devices over SSH (`edge-device`).

Imports edge_agent (bundle format, exit codes) and device_profiles, never the converter or the fleet.
"""
