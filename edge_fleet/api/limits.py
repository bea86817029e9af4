"""Limits of the HTTP side that the CLI shows in --help (kept free of FastAPI imports)."""

DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024  # bundles are tens of MB; a gigabyte upload is a mistake or an attack
MAX_JSON_BODY = 4 * 1024 * 1024  # a deploy to 10,000 devices by id is under 1 MB; see body_limit.py
