"""Every constant the pipeline uses, in one place.

Edit a value here, or override it for one run without editing this file:
    python extract_visual_clip_embeddings.py --BATCH_SIZE=64 --DEVICE=cpu
Every output goes below OUT_DIR, in the layout README.md describes.
"""

# --- data files -------------------------------------------------------------------------
CSV_FILE = "data/1k.csv"  # open-prompts CSV (columns prompt, raw_data), a path or a URL; the default is downloaded on first use
CSV_URL = "https://raw.githubusercontent.com/krea-ai/open-prompts/main/data/1k.csv"  # source of the default CSV_FILE
CSV_SHA256 = "d7072d0a07b0799e21e785cf224448be199826748353a89d40de439f0d3304f5"  # checksum of the default CSV_FILE
OUT_DIR = "outputs"  # every output of every step goes below here; a local folder or a URL of shared storage, s3://bucket/prefix... (README: Storage at a URL)

# --- where steps 2-4 and 3'-4' run ------------------------------------------------------
DISTRIBUTOR = "local"  # "local": in this process and its children; "pyspark": on Apache Spark (README: Beyond one machine)
SPARK_MASTER = ""  # with pyspark: "" = the master spark-submit gave, else a local Spark on this machine's cores; or "spark://host:7077", "local[4]"...

# --- step 1: links from the CSV ---------------------------------------------------------
LINK_WORKERS = -1  # CSV-parsing processes; -1 = one per CPU core that other work leaves idle, 1 = all in the script's own process

# --- step 1 for a folder of your own generations (extract_metadata_from_images.py; IMG_DIR names the folder) ---
PREFERRED_METADATA = "a1111"  # an image carrying two formats keeps both's fields, this one's first when both have one: "a1111", "comfyui", "invokeai", "novelai" or "fooocus"

# --- step 2: download images with img2dataset ------------------------------------------
IMAGE_SIZE = 224  # shorter side of the saved images, in pixels (CLIP sees 224)
RESIZE_MODE = "keep_ratio"  # img2dataset resize mode; keep_ratio never pads (see README)
DOWNLOAD_THREADS = 64  # img2dataset threads per process
DOWNLOAD_PROCESSES = 1  # img2dataset processes
DOWNLOAD_TIMEOUT = 10  # seconds img2dataset waits for one image
DOWNLOAD_RETRIES = 0  # img2dataset retries per failed image
OUTPUT_FORMAT = "files"  # img2dataset output format; step 3 reads "files"

# --- step 3: CLIP embeddings ------------------------------------------------------------
IMG_DIR = ""  # images to embed: "" = what step 2 downloaded, or any folder of images (or its URL)
MODEL = "ViT-B/32"  # CLIP model name, or path to a CLIP checkpoint file, or open_clip:ARCH/PRETRAINED (README: Models)
MODEL_DIR = "~/.cache/clip"  # where CLIP and OpenCLIP keep downloaded weights
DEVICE = ""  # "" = a GPU in fp16 when there is one, else the CPU in fp32; or "cpu", "cuda:1"
BATCH_SIZE = 128  # images per batch and per .npy file
NUM_WORKERS = -1  # image-loading processes; -1 = one per CPU core
DECODE = ""  # "" = JPEGs decoded in batches on the GPU when DEVICE is one, else with PIL in the loading processes; or "cpu", "gpu" (on DEVICE=cpu: the same batched code with the CPU JPEG decoder)

# --- step 4: knn index ------------------------------------------------------------------
MAX_INDEX_MEMORY = "4G"  # largest index autofaiss may build
CURRENT_MEMORY_AVAILABLE = "8G"  # memory autofaiss may use while building
MAX_INDEX_QUERY_TIME_MS = 10.0  # query-time budget: exact search while a scan of every vector fits it, then 4-bit codes all scanned while that fits, then inverted lists (README: step 4)
INDEX_RECALL = 0.995  # recall@10 step 4 tunes nprobe to, measured after the build on noisy and shifted copies of stored vectors against exact search
AESTHETIC_MODEL = ""  # step 4: a checkpoint of LAION's aesthetic predictor for MODEL (README: Triage) scoring every image; "" = no aesthetic score
INDEX_KEY = ""  # "" = step 4's choice by size (README: step 4); or a faiss index_factory string autofaiss accepts, e.g. "IVF4096,Flat"

# --- step 5: queries --------------------------------------------------------------------
INPUT_PROMPT = "image of a blue robot with red background"  # text query
INPUT_IMG_PATH = "data/prompt-search.png"  # image query; the default is downloaded on first use
INPUT_IMG_URL = "https://raw.githubusercontent.com/krea-ai/prompt-search/master/prompt-search.png"  # source of the default INPUT_IMG_PATH
INPUT_IMG_SHA256 = "8577ecb206cb7a7ec185427285f8a96a51052bd0dca5cea15c705c2bd200e0f5"  # checksum of the default INPUT_IMG_PATH
NUM_RESULTS = 5  # results shown per query
SORT = "relevance"  # results in order of "relevance", or of step 4's "adherence" or "aesthetic" (images), or "date", among the first 400 by relevance; README: Triage
GROUP = "none"  # "prompt": one result per prompt (its first by SORT), saying how many more it has
SEARCH_MODE = "hybrid"  # the text query's ranking: "hybrid" (CLIP and the prompts' words, fused by reciprocal rank), "semantic" (CLIP only) or "keyword" (the prompts' words only, BM25); README: Queries
DEDUPE_THRESHOLD = 0.94  # results whose cosine similarity to a better result is at least this are shown as one result (clip-retrieval's default); 1 shows every result
COMPARE_WITH_TORCH = True  # also run torch CLIP on the queries and say whether its top results agree
QUANTIZE_INT8 = False  # query with int8 models (onnxruntime dynamic quantisation, made on first use): faster, slightly different results
QUERY_THREADS = 0  # onnxruntime threads per query; 0 = one per physical core (1 can be faster on a machine other jobs keep busy)

# --- step 6: search server (serve.py) ----------------------------------------------------
SERVE_HOST = "127.0.0.1"  # address the server listens on; 0.0.0.0 lets other machines in (then set SERVE_TOKEN, README: Search server)
SERVE_PORT = 0  # port it listens on; 0 = a free port, printed at start
MAX_UPLOAD_MB = 10.0  # largest query image a request may send; a larger one is refused (413)
MAX_NUM_RESULTS = 200  # most results one request may ask for (num_results, clip-retrieval's num_images)
MAX_NEGATIVES = 16  # most negative phrases one query may have (each costs one text encoding); more is refused (422)
MAX_DECODE_PIXELS = 4096 * 4096  # largest image (width x height, read from its header before decoding) the server decodes, a query image or a thumbnail's; a larger query image is refused (400)
DECODE_SLOTS = 2  # images the server decodes at once; decoding memory stays under DECODE_SLOTS x MAX_DECODE_PIXELS x 4 bytes
UPLOAD_TIMEOUT = 60.0  # seconds a request's body may take to arrive; a slower (or stalled) one is answered 408 and dropped
SERVE_TOKEN = ""  # "" = no login; else every request but /health needs it: an Authorization: Bearer header, or the page's login form (a cookie). Refused at start if shorter than 16 characters
SERVE_OPEN = False  # True lets the server listen beyond loopback without SERVE_TOKEN (anyone on the network may search); else it refuses to start
SERVE_URL = ""  # the server's address as clients reach it (https://search.example), for the absolute thumbnail URLs results carry; "" = the address it listens on
CORS_ORIGINS = ""  # web pages (origins, comma-separated, e.g. http://127.0.0.1:8080; "*" = any) allowed to call clip-retrieval's endpoints from a browser; "" = none
ALLOWED_HOSTS = ""  # host names the server answers to (the Host header), comma-separated; "" = localhost, 127.0.0.1, ::1 and SERVE_HOST; "*" = any (README: Search server)

# --- export: a query's results as a training set (export_results.py, POST /api/export; README: Triage) ---
EXPORT_DIR = ""  # the folder export_results.py creates (it never writes into an existing one); "" = OUT_DIR's exports/<UTC date and time>
EXPORT_INDEX = "images"  # export_results.py: the index whose results are exported, "images" or "prompts" (each prompt with its image)
EXPORT_QUERY = "text"  # export_results.py: the query exported, "text" (INPUT_PROMPT in SEARCH_MODE, with SORT and GROUP) or "image" (INPUT_IMG_PATH)
MAX_EXPORT = 1000  # most results one export may hold, 1 to 1000 (export_results.py's NUM_RESULTS, /api/export's num_results); sorted or grouped: 400
EXPORT_SUBFOLDER = "1_prompt-search"  # kohya's dataset folder in the export, "<repeats>_<name>": each image beside its .txt caption
EXPORT_STRIP_WEIGHTS = True  # captions without A1111's weights ("(castle:1.2)" -> "castle") and LoRA, LyCORIS and hypernetwork tags ("<lora:x:0.8>")

# --- serve.py --WATCH: the index kept in step with IMG_DIR as images arrive (README: Your own generations) ---
WATCH = False  # True: new, changed, renamed and deleted images of IMG_DIR are searchable within seconds, without a rebuild or a restart
WATCH_POLL_S = 0.0  # 0: the file system's events, and a look every 2 s on a network mount that sends none (NFS, SMB, sshfs...); > 0: look every WATCH_POLL_S seconds whatever the folder
WATCH_COMPACT_ITEMS = 10000  # rows added since the published sets at which they are folded into new ones (steps 1, 3, 4, 3', 4') in the background; 10,000 keep a search of them under 5 ms (benchmarks/bench_watch.py)
