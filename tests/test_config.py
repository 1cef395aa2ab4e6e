import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import config
from config_reader import ALLOWED, load_config
from prompt_search.cli import run
from prompt_search.errors import UserError
from prompt_search.settings import DownloadSettings, EmbedSettings, IndexSettings, QuerySettings

REPO = Path(__file__).resolve().parents[1]


def fake_defaults():
    module = types.ModuleType("fake_config")
    module.COUNT = 3
    module.RATE = 0.5
    module.ENABLED = True
    module.NAME = "default"
    module.lower_case_ignored = 1
    return module


def test_no_arguments_gives_config_py_values():
    cfg = load_config([])
    for name in ("CSV_FILE", "BATCH_SIZE", "MAX_INDEX_QUERY_TIME_MS", "COMPARE_WITH_TORCH", "DEVICE"):
        assert getattr(cfg, name) == getattr(config, name)
    assert not hasattr(cfg, "__name__")


def test_overrides_of_each_type():
    cfg = load_config(["--COUNT=7", "--RATE=1e-3", "--ENABLED=false", "--NAME=other"], fake_defaults())
    assert (cfg.COUNT, cfg.RATE, cfg.ENABLED, cfg.NAME) == (7, 0.001, False, "other")
    assert type(cfg.COUNT) is int and type(cfg.RATE) is float and type(cfg.ENABLED) is bool
    assert not hasattr(cfg, "lower_case_ignored")


def test_overrides_of_the_real_config_leave_config_py_alone():
    cfg = load_config(["--BATCH_SIZE=64", "--MAX_INDEX_QUERY_TIME_MS=2.5", "--COMPARE_WITH_TORCH=no", "--DEVICE=cpu"])
    assert (cfg.BATCH_SIZE, cfg.MAX_INDEX_QUERY_TIME_MS, cfg.COMPARE_WITH_TORCH, cfg.DEVICE) == (64, 2.5, False, "cpu")
    assert config.BATCH_SIZE == 128 and config.COMPARE_WITH_TORCH is True and config.DEVICE == ""


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("True", True), ("1", True), ("yes", True), ("FALSE", False), ("0", False), ("no", False)],
)
def test_bool_spellings(text, expected):
    assert load_config([f"--ENABLED={text}"], fake_defaults()).ENABLED is expected


def test_int_setting_accepts_a_float_setting_accepts_an_int():
    cfg = load_config(["--RATE=2", "--COUNT=-4"], fake_defaults())
    assert cfg.RATE == 2.0 and type(cfg.RATE) is float and cfg.COUNT == -4


def test_string_values_keep_everything_after_the_first_equals_sign():
    assert load_config(["--NAME=a=b c"], fake_defaults()).NAME == "a=b c"
    assert load_config(["--DEVICE="]).DEVICE == ""


def test_the_last_override_of_a_name_wins():
    assert load_config(["--COUNT=1", "--COUNT=2"], fake_defaults()).COUNT == 2


@pytest.mark.parametrize("arg, name", [("--NOPE=1", "NOPE"), ("--batch_size=1", "batch_size"), ("--=1", "''")])
def test_unknown_name_is_refused_naming_it(arg, name):
    with pytest.raises(UserError, match="unknown setting") as error:
        load_config([arg])
    assert name in str(error.value)
    assert "BATCH_SIZE" in str(error.value)  # the message lists the settings there are


@pytest.mark.parametrize(
    "arg",
    [
        "--BATCH_SIZE=abc",
        "--BATCH_SIZE=1.5",
        "--BATCH_SIZE=",
        "--COMPARE_WITH_TORCH=maybe",
        "--COMPARE_WITH_TORCH=",
        "--MAX_INDEX_QUERY_TIME_MS=fast",
    ],
)
def test_wrong_type_is_refused_naming_setting_and_value(arg):
    with pytest.raises(UserError, match="expected a") as error:
        load_config([arg])
    assert arg in str(error.value)


@pytest.mark.parametrize("arg", ["BATCH_SIZE=64", "-BATCH_SIZE=64", "--BATCH_SIZE", "BATCH_SIZE", ""])
def test_malformed_argument_is_refused(arg):
    with pytest.raises(UserError, match="--NAME=value") as error:
        load_config([arg])
    assert repr(arg) in str(error.value)


@pytest.mark.parametrize("arg, words", [
    ("--BATCH_SIZE=abc", ["BATCH_SIZE", "abc", "int"]),
    ("--NOPE=1", ["NOPE"]),
    ("--NUM_RESULTS=0", ["--NUM_RESULTS=0", "1 or more"]),
    ("--BATCH_SIZE=-3", ["--BATCH_SIZE=-3", "1 or more"]),
])
def test_script_with_bad_override_exits_1_with_one_error_line(tmp_path, arg, words):
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "extract_img_links_from_csv.py"), arg],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]
    assert list(tmp_path.iterdir()) == []  # refused before fetching or writing anything


@pytest.mark.parametrize(("raised", "status", "message"), [
    (UserError("no such file: x.csv"), 1, "error: no such file: x.csv"),
    (KeyboardInterrupt(), 130, "interrupted: outputs already complete are kept; run it again to go on"),
])
def test_run_turns_errors_into_one_line_and_an_exit_status(capsys, raised, status, message):
    def main(argv):
        raise raised

    with pytest.raises(SystemExit) as exit_:
        run(main)
    printed = capsys.readouterr().err.strip()
    code = exit_.value.code
    if isinstance(code, str):  # sys.exit(message): Python prints it and exits with 1
        printed, code = code, 1
    assert (code, printed) == (status, message)


# --- allowed ranges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arg, allowed",
    [
        ("--NUM_RESULTS=0", "1 or more"),
        ("--NUM_RESULTS=-1", "1 or more"),
        ("--BATCH_SIZE=0", "1 or more"),
        ("--BATCH_SIZE=-3", "1 or more"),
        ("--IMAGE_SIZE=0", "1 or more"),
        ("--DOWNLOAD_THREADS=0", "1 or more"),
        ("--DOWNLOAD_PROCESSES=0", "1 or more"),
        ("--DOWNLOAD_TIMEOUT=0", "1 or more"),
        ("--DOWNLOAD_RETRIES=-1", "0 or more"),
        ("--LINK_WORKERS=0", "-1 (one per CPU core) or 1 or more"),
        ("--LINK_WORKERS=-2", "-1 (one per CPU core) or 1 or more"),
        ("--NUM_WORKERS=-2", "-1 (one per CPU core) or 0 or more"),
        ("--QUERY_THREADS=-1", "0 or more"),
        ("--MAX_INDEX_QUERY_TIME_MS=0", "more than 0"),
        ("--MAX_INDEX_QUERY_TIME_MS=-5.5", "more than 0"),
        ("--MAX_INDEX_QUERY_TIME_MS=nan", "more than 0"),
        ("--DEDUPE_THRESHOLD=0", "more than 0 and at most 1"),
        ("--DEDUPE_THRESHOLD=1.01", "more than 0 and at most 1"),
        ("--DEDUPE_THRESHOLD=nan", "more than 0 and at most 1"),
        ("--MAX_INDEX_MEMORY=4", 'a size like "4G"'),
        ("--MAX_INDEX_MEMORY=4GiB", 'a size like "4G"'),
        ("--MAX_INDEX_MEMORY=0G", 'a size like "4G"'),
        ("--MAX_INDEX_MEMORY=", 'a size like "4G"'),
        ("--CURRENT_MEMORY_AVAILABLE=lots", 'a size like "4G"'),
        ("--CURRENT_MEMORY_AVAILABLE=-8G", 'a size like "4G"'),
        ("--RESIZE_MODE=keep-ratio", "one of 'keep_ratio', 'no', 'border', 'center_crop', 'keep_ratio_largest'"),
        ("--OUTPUT_FORMAT=file", "one of 'files', 'webdataset'"),
        ("--DECODE=nvjpeg", "one of '', 'cpu', 'gpu'"),
        ("--CSV_SHA256=abc", "64 lower-case hex digits"),
        ("--INPUT_IMG_SHA256=" + "A" * 64, "64 lower-case hex digits"),
    ],
)
def test_value_out_of_range_is_refused_naming_setting_value_and_range(arg, allowed):
    with pytest.raises(UserError) as error:
        load_config([arg])
    message = str(error.value)
    assert message.startswith(f"{arg}: {arg[2:].partition('=')[0]} must be ") and allowed in message


@pytest.mark.parametrize(
    "arg",
    ["--NUM_RESULTS=1", "--BATCH_SIZE=1", "--LINK_WORKERS=-1", "--LINK_WORKERS=1", "--NUM_WORKERS=-1",
     "--NUM_WORKERS=0", "--QUERY_THREADS=0", "--DOWNLOAD_RETRIES=0", "--DEDUPE_THRESHOLD=1",
     "--DEDUPE_THRESHOLD=0.5", "--MAX_INDEX_QUERY_TIME_MS=0.1", "--MAX_INDEX_MEMORY=512mb", "--MAX_INDEX_MEMORY=1.5GB",
     "--CURRENT_MEMORY_AVAILABLE=16B", "--RESIZE_MODE=border", "--OUTPUT_FORMAT=webdataset",
     "--DECODE=", "--DECODE=cpu", "--DECODE=gpu"],
)
def test_values_at_the_edges_of_their_range_are_accepted(arg):
    name, _, text = arg[2:].partition("=")
    assert str(getattr(load_config([arg]), name)) == str(type(getattr(config, name))(text))


def test_every_default_is_in_range_and_every_number_setting_has_a_range():
    load_config([])  # raises on a default out of its range
    numbers = {name for name, value in vars(config).items() if name.isupper() and type(value) in (int, float)}
    assert numbers <= set(ALLOWED), f"settings without a range in config_reader.py: {numbers - set(ALLOWED)}"
    assert set(ALLOWED) <= set(vars(config)), "a range for a setting config.py does not have"
    for name, allowed in ALLOWED.items():
        assert allowed.accepts(getattr(config, name)), name


def test_resize_modes_are_img2dataset_s():
    from img2dataset.resizer import ResizeMode

    assert all(ALLOWED["RESIZE_MODE"].accepts(mode.name) for mode in ResizeMode)
    assert ALLOWED["RESIZE_MODE"].says.count("'") == 2 * len(ResizeMode)  # and no other


def test_a_default_out_of_range_is_refused_naming_config_py():
    module = types.ModuleType("config")
    module.NUM_RESULTS = 0
    with pytest.raises(UserError) as error:
        load_config([], module)
    assert str(error.value) == "config.py: NUM_RESULTS = 0: NUM_RESULTS must be 1 or more"
    assert load_config(["--NUM_RESULTS=3"], module).NUM_RESULTS == 3  # an override in range replaces it


@pytest.mark.parametrize("settings", [DownloadSettings, EmbedSettings, IndexSettings, QuerySettings])
def test_each_step_s_settings_come_from_config_py(settings):
    cfg = load_config([])
    built = settings.of(cfg)
    for field in dataclasses.fields(settings):
        assert getattr(built, field.name) == getattr(cfg, field.name.upper())
    if settings is IndexSettings:  # the one default that is config.py's value
        assert IndexSettings("1G", "2G", 10.0).index_recall == config.INDEX_RECALL
