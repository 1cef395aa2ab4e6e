"""serve.py --WATCH: the living index of a folder of one's own generations (README: Your own generations)."""
