"""Answering questions: the search core, the query encoder, step 5's console output, the server."""
