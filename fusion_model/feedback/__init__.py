"""Learning from shoppers: search and interaction events (``events``)."""
