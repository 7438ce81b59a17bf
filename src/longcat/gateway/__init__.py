"""Between the wire and the engines: who is calling, may they, and what did it cost."""
