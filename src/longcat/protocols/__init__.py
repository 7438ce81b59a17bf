"""Wire formats. Each module translates its format to and from the canonical model, and nothing
else: no I/O, no knowledge of engines or accounts."""
