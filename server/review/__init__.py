"""The incident review web app (`probewatch review`): a queue, an incident page with per-token
heatmaps, review actions with an audit trail, and review metrics. Server-rendered (FastAPI +
Jinja2), a little dependency-free JavaScript, no build step."""
