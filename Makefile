# make run: set up .venv and run the whole pipeline on the default data (README, "Run").
# make serve: after make run, the search server and its page (prints the URL).
# make serve-own IMG_DIR=path: index the folder on first use, then serve it and keep the index in step as images arrive.
# make own IMG_DIR=path: index a folder of one's own generations, prompts read from the files (README, "Your own generations").
# make test: set up .venv and run the tests (those on the real 1k.csv need PROMPT_SEARCH_DATA: see README).
# make lint: ruff, and the import-linter contracts that keep the package's wings in order (README: How the code is laid out).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup run serve own serve-own test lint browser java

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-dev-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-dev-nodeps.txt
	touch $@

setup: $(VENV)/.installed

# The image side needs images: when none downloaded, it says why and the prompt side goes on alone.
run: setup
	$(PY) extract_img_links_from_csv.py $(ARGS)
	$(PY) download_images.py $(ARGS)
	$(PY) extract_textual_clip_embeddings.py $(ARGS)
	$(PY) create_textual_knn_indices.py $(ARGS)
	$(PY) extract_visual_clip_embeddings.py $(ARGS) && $(PY) create_visual_knn_indices.py $(ARGS) \
		|| echo "(no image index this run: see the message above)"
	$(PY) test_visual_knn_index.py $(ARGS)

# Step 6: the search page and API over what `make run` built (README, "Search server").
serve: setup
	$(PY) serve.py $(ARGS)

own: setup
	@test -n "$(IMG_DIR)" || { echo "usage: make own IMG_DIR=path/to/your/images [ARGS=...]"; exit 1; }
	$(PY) extract_metadata_from_images.py --IMG_DIR="$(IMG_DIR)" $(ARGS)
	$(PY) extract_visual_clip_embeddings.py --IMG_DIR="$(IMG_DIR)" $(ARGS)
	$(PY) create_visual_knn_indices.py $(ARGS)
	$(PY) extract_textual_clip_embeddings.py $(ARGS) && $(PY) create_textual_knn_indices.py $(ARGS) \
		|| echo "(no prompt index this run: see the message above)"
	$(PY) test_visual_knn_index.py $(ARGS)

# The server over a folder of one's own generations, indexed on first use and kept in step with it (serve.py --WATCH).
serve-own: setup
	@test -n "$(IMG_DIR)" || { echo "usage: make serve-own IMG_DIR=path/to/your/images [ARGS=...]"; exit 1; }
	$(PY) serve.py --IMG_DIR="$(IMG_DIR)" --WATCH=True $(ARGS)

# tests/test_gallery.py drives Debian's chromium through chromedriver: install both when missing (CI runs as root).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi

# tests/test_spark.py runs steps 2-4 on a local Spark, which needs a Java runtime: Debian's when missing (CI runs as root).
java:
	@if ! command -v java >/dev/null; then \
		apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless; \
	fi

test: setup browser java
	$(PY) -m pytest -q -rs --durations=25 tests

# ruff, and the import-linter contracts of pyproject.toml: the package's wings import only downwards.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
