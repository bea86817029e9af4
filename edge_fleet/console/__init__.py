"""The fleet's web console: static HTML, CSS and ES modules in static/ (no build step), served by
edge_fleet.api at `/`. It talks only to the JSON API, with the token kept in sessionStorage."""
