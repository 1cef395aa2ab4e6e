"""clip-retrieval's protocol, as its client (ClipClient) and its web front call it: /indices-list, /knn-service and
/metadata. One indice, INDICE_NAME; its modality picks the images index ("image") or the prompts index ("text")."""

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from prompt_search.search.answers import check_count, described, link, state
from prompt_search.search.api_input import INDICE_NAME, KnnRequest, decode_base64, read_json, validated
from prompt_search.search.core import combine
from prompt_search.search.hybrid import Wanted
from prompt_search.search.service import Answer, BadInput

MAX_METADATA_IDS = 1000  # ids one /metadata request may name (the front asks 40 at a time)


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ids: list[str | int]  # the ids /knn-service answered (the front's JSON parser may give numbers back)
    indice_name: str = INDICE_NAME


async def indices_list() -> list[str]:
    return [INDICE_NAME]


async def knn_service(request: Request) -> JSONResponse:
    """clip-retrieval's search: one of text, image or embedding_input, over images (modality image) or prompts.

    The front's other options: deduplicate folds near-identical results (DEDUPE_THRESHOLD); num_result_ids is
    accepted and ignored (every result comes described, so /metadata is never needed for them); use_mclip is refused;
    the safety, violence and aesthetic options are accepted and ignored (the collection has no such scores)."""
    searcher, settings = state(request)
    query = validated(KnnRequest, await read_json(request, settings.max_upload_bytes, settings.upload_timeout))
    _check_knn(query)
    check_count(settings.max_results, query.num_images)
    side = "images" if query.modality == "image" else "prompts"

    def run() -> Answer:
        if query.text:
            vector = searcher.encode_text(query.text, [])
        elif query.image:
            vector = searcher.encode_image(decode_base64(query.image, settings.max_upload_bytes))
        else:
            vector = combine([(np.asarray(query.embedding_input, dtype=np.float32), 1.0)])
        # CLIP only, whatever the page's default: clip-retrieval's clients expect its ranking
        wanted = Wanted(query.num_images, 0, settings.dedupe_threshold if query.deduplicate else 1.0, "semantic")
        return searcher.search(side, vector, wanted, {}, Answer([]))

    answer = await run_in_threadpool(run)
    return JSONResponse([{"id": hit.id, "similarity": hit.score, "url": link(searcher, settings, hit, side),
                          "caption": hit.prompt} for hit in answer.hits])


def _check_knn(query: KnnRequest) -> None:
    if query.indice_name != INDICE_NAME:
        raise BadInput(f"unknown indice_name {query.indice_name!r}: /indices-list has [{INDICE_NAME!r}]")
    if query.use_mclip:
        raise BadInput("use_mclip is not supported: the text is encoded by this index's own CLIP")
    if query.image_url:
        raise BadInput("image_url is refused: this server fetches no URL; send the image itself, base64, in image")
    if len([name for name in ("text", "image", "embedding_input") if getattr(query, name)]) != 1:
        raise BadInput("give exactly one of text, image and embedding_input")


async def metadata(request: Request) -> JSONResponse:
    """clip-retrieval's /metadata: [{"id", "metadata": {"caption", "url", ...}}] for each id found, in the order
    asked; an id neither index has is left out. By binary search over each item table's sorted ids: O(k log n)."""
    searcher, settings = state(request)
    query = validated(MetadataRequest, await read_json(request, 0, settings.upload_timeout))
    if query.indice_name != INDICE_NAME:
        raise BadInput(f"unknown indice_name {query.indice_name!r}: /indices-list has [{INDICE_NAME!r}]")
    if len(query.ids) > MAX_METADATA_IDS:
        raise BadInput(f"at most {MAX_METADATA_IDS} ids, got {len(query.ids)}", 422)
    found = await run_in_threadpool(searcher.by_ids, [str(item_id) for item_id in query.ids])
    return JSONResponse([{"id": hit.id, "metadata": {"caption": hit.prompt, **described(searcher, settings, hit, side)}}
                         for side, hit in found])
