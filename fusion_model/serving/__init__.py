"""Search serving: the champion searcher, the HTTP service and its review page."""
