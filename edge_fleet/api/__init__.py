"""The fleet's management API and web console over HTTP (FastAPI + uvicorn), served by
`edge-fleet serve --http PORT`.

    app.py             create_app(): routers, error handlers, security headers, the console's static files
    body_limit.py      413 for a request body over MAX_JSON_BODY before FastAPI reads it (uploads excepted)
    deps.py            ApiState (registry, trusted keys, upload limit), token -> Actor, pagination
    errors.py          every refusal as {"error", "message", "exit_code"} with its HTTP status
    models.py          request bodies (deploy, group, token)
    routes_fleet.py    overview, devices (filter, sort, page), device detail, groups
    routes_bundles.py  bundles: list, detail, download, upload (= edge-fleet publish)
    routes_rollouts.py rollouts: list, create, progress, halt / resume / rollback
    routes_admin.py    tokens, audit log
    events.py          server-sent events for the live console
    server.py          HttpServer: uvicorn in a thread, TLS when a certificate is given
    limits.py          defaults the CLI shows without importing FastAPI

Import from the modules (edge_fleet.api.server, ...): this file stays light so that `edge-fleet
--help` does not load FastAPI.
"""

