"""What an operator watches: metrics, the access log, health and readiness.

Used by the app and the gateway; imports nothing from `api` or `console`.
"""
