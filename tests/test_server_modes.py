"""The server's three ranking modes (hybrid, semantic, keyword) through a real HTTP client and the page in a real
browser: which ranking found each result, the matched words highlighted and escaped, clip-retrieval's /knn-service
by CLIP alone."""

import base64

import pytest
import requests
from conftest import run_script
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_gallery import browser  # noqa: F401  (the headless Chromium fixture)
from test_server import PROMPTS, SCRIPT_PROMPT, built, load_clip_client, post, server  # noqa: F401  (fixtures)

from prompt_search.index.keywords import words


def search(base: str, **body) -> dict:
    answer = post(base, "/api/search", **{"index": "prompts", "num_results": 8, "dedupe": False, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def holding(word: str) -> set[str]:
    return {prompt for prompt in PROMPTS if word in words(prompt)}


def test_keyword_mode_finds_only_the_prompts_with_the_words(server):  # noqa: F811
    body = search(server, text="red", mode="keyword", cards=True)
    assert body["mode"] == "keyword" and {hit["prompt"] for hit in body["results"]} == holding("red")
    assert all(set(hit["found_by"]) == {"keywords"} and hit["score"] == hit["found_by"]["keywords"]
               for hit in body["results"])
    assert body["cards"].count("<mark>red</mark>") == len(holding("red")) and "found by" not in body["cards"]
    phrase = search(server, text='"red background"', mode="keyword")["results"]
    assert [hit["prompt"] for hit in phrase] == [PROMPTS[0]]
    assert search(server, text="red -rain", mode="keyword")["results"][0]["prompt"] == PROMPTS[0]
    assert len(search(server, text="red -rain", mode="keyword")["results"]) == 1


def test_semantic_mode_is_clip_alone(server):  # noqa: F811
    body = search(server, text="red", mode="semantic", cards=True)
    assert body["mode"] == "semantic" and len(body["results"]) == len(PROMPTS)
    assert all(set(hit["found_by"]) == {"clip"} and hit["score"] == hit["found_by"]["clip"] for hit in body["results"])
    assert "<mark>" not in body["cards"]


def test_hybrid_mode_fuses_both_and_says_which_found_each(server):  # noqa: F811
    body = search(server, text="red", cards=True)  # the default for a text
    assert body["mode"] == "hybrid" and len(body["results"]) == len(PROMPTS)
    by_words = {hit["prompt"] for hit in body["results"] if "keywords" in hit["found_by"]}
    assert by_words == holding("red") and all("clip" in hit["found_by"] for hit in body["results"])
    # every prompt is in the CLIP ranking, so those the words found too rank first (RRF adds their two ranks)
    assert {hit["prompt"] for hit in body["results"][:len(by_words)]} == by_words
    assert body["cards"].count("found by words and CLIP") == len(by_words)
    pasted = search(server, text="A NEON city, at night")  # a prompt written another way: its own row first
    assert pasted["results"][0]["prompt"] == "neon city at night"
    whole = search(server, text="a red", filters={"seed": {"min": 1}})["results"]
    pages = [hit for offset in (0, 3) for hit in search(server, text="a red", filters={"seed": {"min": 1}},
                                                        num_results=3, offset=offset)["results"]]
    assert [hit["id"] for hit in pages] == [hit["id"] for hit in whole[:6]] and all(
        int(hit["seed"]) >= 1 for hit in whole)


def test_an_image_query_is_ranked_by_clip(server, built):  # noqa: F811
    work, _ = built
    image = sorted((work / "out" / "images").rglob("*.jpg"))[0]
    body = post(server, "/api/search", image=base64.b64encode(image.read_bytes()).decode(), index="images").json()
    assert body["mode"] == "semantic" and all(set(hit["found_by"]) == {"clip"} for hit in body["results"])


@pytest.mark.parametrize(("body", "message"), [
    ({"text": "red", "mode": "fuzzy"}, "mode"),
    ({"text": "!!! ???", "mode": "keyword"}, "no words"),
    ({"text": "red", "mode": "keyword", "like": {"index": "prompts", "position": 0}}, "words only"),
    ({"text": "red", "sort": "date", "offset": 395, "num_results": 10}, "must be at most 400"),
    ({"text": "red", "group": "photo"}, "group"),
])
def test_bad_modes_get_a_422_and_a_message(server, body, message):  # noqa: F811
    answer = requests.post(f"{server}/api/search", json=body, timeout=30)
    assert answer.status_code == 422 and message in answer.json()["error"], answer.text


def test_knn_service_stays_clip_only(server):  # noqa: F811
    client_module = load_clip_client()
    client = client_module.ClipClient(url=f"{server}/knn-service", indice_name="prompt-search", num_images=8,
                                      modality=client_module.Modality.TEXT)
    semantic = {hit["id"]: hit["score"] for hit in search(server, text="red", mode="semantic")["results"]}
    found = client.query(text="red")
    assert len(found) == len(PROMPTS) and all(hit["similarity"] == pytest.approx(semantic[hit["id"]], abs=1e-5)
                                              for hit in found)


def test_page_switches_modes_and_highlights_matched_words_escaped(server, browser):  # noqa: F811
    wait = WebDriverWait(browser, 30)
    browser.get(server + "/")
    browser.find_element(By.CSS_SELECTOR, "input[value=prompts]").click()
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=keyword]").click()
    browser.find_element(By.ID, "text").send_keys("script planted")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .prompt mark"))
    prompt = browser.find_element(By.CSS_SELECTOR, "#results .prompt")
    assert prompt.text == SCRIPT_PROMPT  # the markup in the prompt is text, the marks around its words
    assert [mark.text for mark in prompt.find_elements(By.TAG_NAME, "mark")] == ["script", "script", "planted"]
    assert not browser.find_elements(By.CSS_SELECTOR, "#results script")
    assert browser.execute_script("return window.__pwned") is None
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .card")) == 1  # words only: one prompt has them
    assert "(keyword)" in browser.find_element(By.ID, "status").text

    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=hybrid]").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) > 1)
    labels = [found.text for found in browser.find_elements(By.CSS_SELECTOR, "#results .found-by")]
    assert labels[0] == "found by words and CLIP" and set(labels[1:]) == {"found by CLIP"}
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=semantic]").click()
    wait.until(lambda d: "(semantic)" in d.find_element(By.ID, "status").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "#results mark, #results .found-by")


def test_step_5_ranks_its_text_query_in_search_mode(built):  # noqa: F811
    work, common = built
    image = str(sorted((work / "out" / "images").rglob("*.jpg"))[0])
    printed = {}
    for mode in ("keyword", "hybrid", "semantic"):
        result = printed[mode] = run_script(
            "test_visual_knn_index.py", *common, "--INPUT_PROMPT=red", f"--SEARCH_MODE={mode}",
            f"--INPUT_IMG_PATH={image}", "--NUM_RESULTS=8", f"--COMPARE_WITH_TORCH={mode == 'hybrid'}", cwd=work)
        section = result.stdout.split(f"SIMILAR PROMPTS TO THE TEXT 'red' ({mode})", 1)[1].split("\n\n", 1)[0]
        shown = {prompt for prompt in PROMPTS if f"{prompt[:80]!r}" in section}
        page = (work / "out" / "results.html").read_text(encoding="utf-8")
        if mode == "keyword":
            assert shown == holding("red") and page.count("<mark>red</mark>") >= 2 * len(holding("red"))
        else:  # every prompt, those holding the word marked by the hybrid mode only
            assert shown == set(PROMPTS) and ("<mark>red</mark>" in page) == (mode == "hybrid")
        assert "SIMILAR IMAGES TO THE IMAGE" in result.stdout and "(semantic)" in result.stdout.split("TO THE IMAGE")[1]
    # torch CLIP's vector ranked the same way (the same keyword ranking fused) gives the same top 8
    assert "torch CLIP and ONNX CLIP top 8 prompts for the text query: the same" in printed["hybrid"].stdout
    refused = run_script("test_visual_knn_index.py", *common, "--SEARCH_MODE=fuzzy", cwd=work, check=False)
    assert refused.returncode == 1 and "SEARCH_MODE" in refused.stderr and "Traceback" not in refused.stderr


def test_a_set_without_keyword_index_answers_by_clip_and_says_so():
    from prompt_search.index.keywords import parse_query
    from prompt_search.search.api_input import SearchRequest, search_mode
    from prompt_search.search.service import BadInput

    keywords, notes = parse_query("red car"), []
    assert search_mode(SearchRequest(text="red car"), keywords, None, notes) == "semantic"
    assert notes == ["the images index has no keyword index (rebuild it with step 4): searched by CLIP only"]
    for mode, status in (("hybrid", 409), ("keyword", 409)):
        with pytest.raises(BadInput, match="no keyword index") as refused:
            search_mode(SearchRequest(text="red car", mode=mode), keywords, None, [])
        assert refused.value.status == status


def test_results_sort_and_filter_by_adherence_within_the_candidates(server):  # noqa: F811
    by_relevance = post(server, "/api/search", text="a picture", index="images", num_results=8, dedupe=False).json()
    adherence = {hit["id"]: hit["adherence"] for hit in by_relevance["results"]}
    assert len(adherence) == len(PROMPTS) and all(isinstance(value, float) for value in adherence.values())
    ordered = post(server, "/api/search", text="a picture", index="images", num_results=8, dedupe=False,
                   sort="adherence").json()
    assert ordered["sort"] == "adherence"
    assert [hit["id"] for hit in ordered["results"]] == sorted(adherence, key=lambda item: -adherence[item])
    assert [hit["rank"] for hit in ordered["results"]] == list(range(1, 9))
    pages = [hit["id"] for offset in (0, 4) for hit in post(
        server, "/api/search", text="a picture", index="images", num_results=4, offset=offset, dedupe=False,
        sort="adherence").json()["results"]]
    assert pages == [hit["id"] for hit in ordered["results"]]
    values = sorted(adherence.values())
    middle = (values[3] + values[4]) / 2  # between two results (the answer rounds to 4 decimals)
    kept = post(server, "/api/search", text="a picture", index="images", num_results=8, dedupe=False,
                filters={"adherence": {"min": middle}}).json()["results"]
    assert {hit["id"] for hit in kept} == {item for item, value in adherence.items() if value >= middle}
    refused = post(server, "/api/search", text="a picture", index="images", sort="aesthetic")
    assert refused.status_code == 422 and "no aesthetic to sort by" in refused.json()["error"]
    assert post(server, "/api/search", text="a picture", index="prompts", sort="adherence").status_code == 422


def test_step_5_sorts_images_by_adherence_one_per_prompt(built):  # noqa: F811
    work, common = built
    image = str(sorted((work / "out" / "images").rglob("*.jpg"))[0])
    result = run_script("test_visual_knn_index.py", *common, f"--INPUT_IMG_PATH={image}", "--NUM_RESULTS=8",
                        "--COMPARE_WITH_TORCH=False", "--SORT=adherence", "--GROUP=prompt", "--DEDUPE_THRESHOLD=1",
                        cwd=work)
    assert "(the prompts index has no adherence: step 4 computes them for images; shown without)" in result.stdout
    section = result.stdout.split("SIMILAR IMAGES TO THE TEXT", 1)[1].split("\n\n", 1)[0]
    shown = [float(line.split("adherence ")[1].split()[0]) for line in section.splitlines() if "adherence " in line]
    assert len(shown) == len(PROMPTS) and shown == sorted(shown, reverse=True)


def test_page_sorts_by_adherence_and_offers_only_what_the_index_has(server, browser):  # noqa: F811
    from selenium.webdriver.support.ui import Select

    wait = WebDriverWait(browser, 30)
    browser.get(server + "/")
    wait.until(lambda d: not d.find_element(By.ID, "group").get_attribute("disabled"))  # images: prompt groups
    Select(browser.find_element(By.ID, "sort")).select_by_value("adherence")
    browser.find_element(By.ID, "group").click()
    browser.find_element(By.ID, "text").send_keys("a picture")

    def adherences(driver) -> list[float]:
        details = [element.text for element in driver.find_elements(By.CSS_SELECTOR, "#results .details")]
        return [float(text.split("adherence ")[1].split()[0]) for text in details if "adherence " in text]

    wait.until(lambda d: len(adherences(d)) >= 3)
    shown = adherences(browser)
    assert shown == sorted(shown, reverse=True)
    browser.find_element(By.CSS_SELECTOR, "input[value=prompts]").click()  # prompts have neither
    wait.until(lambda d: d.find_element(By.ID, "group").get_attribute("disabled"))
    assert Select(browser.find_element(By.ID, "sort")).first_selected_option.get_attribute("value") == "relevance"
    assert browser.find_element(By.CSS_SELECTOR, "#sort option[value=adherence]").get_attribute("disabled")
    wait.until(lambda d: "error" not in (d.find_element(By.ID, "status").get_attribute("class") or ""))
