"""Step 4: the knn index over an embedding set, and the choice of index for its size."""
