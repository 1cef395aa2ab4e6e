"""The words a keyword index reads from a prompt, and from a query: Stable Diffusion's syntax is not words."""

import pytest

from prompt_search.index.keywords import words


@pytest.mark.parametrize("text, expected", [
    ("(masterpiece:1.2), ((best quality)), [blurry], {sharp}", "masterpiece best quality blurry sharp"),
    ("(word: 1.3)", "word"),
    ("a [cat:dog:0.5] BREAK (red:.5) hair", "a cat dog break red hair"),
    ("portrait by Greg_Rutkowski and Alphonse Múcha", "portrait by greg rutkowski and alphonse mucha"),
    ("GREG-RUTKOWSKI, trending on ArtStation", "greg rutkowski trending on artstation"),
    ("<lora:add_detail:0.8> a cat <lyco:My-Style>", "lora add detail a cat lyco my style"),
    ("<lora:add_detail>", "lora add detail"),
    ("<LoRA: add_detail : -0.35 >", "lora add detail"),
    ("一只猫 a cat in a teacup", "一 只 猫 a cat in a teacup"),
    ("score_9, score_8_up | 3d render 8k", "score 9 score 8 up 3d render 8k"),
    ("Ｆｕｌｌｗｉｄｔｈ Café Straße", "fullwidth cafe strasse"),
    ("", ""),
])
def test_words_as_stable_diffusion_users_write_them(text, expected):
    assert words(text) == expected.split()


def test_a_query_written_another_way_reads_as_the_prompt():
    prompt = "((masterpiece)), portrait of a witch by (greg_rutkowski:1.1), <lora:add_detail:0.6>"
    for query in ("Greg Rutkowski", "greg-rutkowski", "(GREG_RUTKOWSKI)", "<lora:add_detail>", "add detail"):
        found = words(query)
        assert any(words(prompt)[i:i + len(found)] == found for i in range(len(words(prompt))))
