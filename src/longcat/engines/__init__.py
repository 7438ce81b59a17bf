"""Model engines: everything that turns a canonical `ChatRequest` into canonical events."""
