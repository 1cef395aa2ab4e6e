"""Rows of metadata, wherever they come from: open-prompts CSV rows, URL keys, the metadata table, image files."""
