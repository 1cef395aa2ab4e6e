"""prompt-search: CLIP semantic search over AI-generated images and their prompts."""
