"""prompt-search: CLIP semantic search over AI-generated images and their prompts."""

import warnings

# clip-anytorch imports pkg_resources, which warns on every run; setuptools<81 keeps it working.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
