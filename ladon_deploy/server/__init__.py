"""The server half of the split: the server stage (payload -> results) and post-processing."""
