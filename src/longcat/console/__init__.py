"""The web console: server-rendered pages (Jinja2 + a little htmx) over gateway/ and store/.

Every page is a client of the same code paths as its `/api/v1/` JSON twin. Nothing here is
imported by `longcat.api`, and nothing here imports it.
"""
