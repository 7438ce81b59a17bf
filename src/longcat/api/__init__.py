"""HTTP routes for the wire formats: thin glue of decode -> gateway -> encode."""
