"""--MODEL as a checkpoint path: CLIP's own TorchScript archives and torch.save'd state dicts load; any other file is
one error line naming it, and nothing in a file runs."""

import os
import pickle

import pytest
import torch
from conftest import make_image, run_script

from prompt_search.errors import UserError
from prompt_search.models.openai_clip import load_clip


class RunsCode:
    """Unpickling this runs a command: it must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def not_checkpoints(folder):
    """(file, what it is) for files that are not CLIP checkpoints."""
    marker = folder / "code-ran"
    (folder / "notes.txt").write_text("not a checkpoint\n")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "list.pkl").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    (folder / "code.pkl").write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    torch.save({"weights": RunsCode(marker)}, folder / "code.pt")
    torch.save([torch.zeros(2)], folder / "tensors.pt")
    torch.save({"linear.weight": torch.zeros(2, 2)}, folder / "other_model.pt")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(folder / "other_torchscript.pt"))
    return marker, sorted(p for p in folder.iterdir() if p != marker)


def test_files_that_are_not_clip_checkpoints_are_one_clear_error(tmp_path):
    marker, files = not_checkpoints(tmp_path)
    assert len(files) == 8
    for path in files:
        with pytest.raises(UserError) as error:
            load_clip(str(path), "cpu", str(tmp_path))
        message = str(error.value)
        assert message.startswith(f"--MODEL={path} is not a CLIP checkpoint: ") and "\n" not in message, message
        assert "weights_only" not in message  # no advice to unpickle what the file holds
    assert not marker.exists()


def test_script_with_a_text_file_as_model_exits_1_with_one_line(tmp_path):
    make_image(tmp_path / "images" / "a.png", (64, 64))
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    result = run_script("extract_visual_clip_embeddings.py", "--IMG_DIR=images", "--MODEL=notes.txt", "--OUT_DIR=out",
                        cwd=tmp_path, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: --MODEL=notes.txt is not a CLIP checkpoint")


def test_torchscript_archive_and_state_dict_give_the_same_model(tmp_path, tiny_clip):
    """OpenAI distributes TorchScript archives (clip.load's JIT files); a torch.save'd state dict is the other kind."""
    model, preprocess = load_clip(tiny_clip, "cpu", str(tmp_path))
    image, text = torch.zeros(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)
    with torch.inference_mode():
        torch.jit.trace(model, (image, text), check_trace=False).save(str(tmp_path / "traced.pt"))
    traced, _ = load_clip(str(tmp_path / "traced.pt"), "cpu", str(tmp_path))
    tokens = torch.randint(1, 49000, (2, 77))
    with torch.inference_mode():
        assert torch.equal(traced.encode_text(tokens), model.encode_text(tokens))
    assert preprocess is not None
