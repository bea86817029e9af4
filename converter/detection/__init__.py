"""Detector-specific conversion: what task a model does (from its metadata or --task), which outputs play
which role, and which nodes form the decode head that int8 must leave in float."""
