"""Steps 3 and 3': CLIP embeddings of images and prompts, written as output sets."""
