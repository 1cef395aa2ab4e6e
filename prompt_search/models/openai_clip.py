"""Load a CLIP model by name or checkpoint path, on the right device, or say clearly why not."""

import os
import pickle
import urllib.error
import warnings
import zipfile

import torch

from prompt_search.errors import UserError, error_line


def choose_device(device: str) -> str:
    """"" picks the first GPU when there is one, else the CPU; a device torch cannot use here is a UserError."""
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"--DEVICE={device} is not a device torch knows: cpu, cuda, cuda:1, ...") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--DEVICE={device}: torch finds no CUDA GPU on this machine; set --DEVICE=cpu, or leave "
                        "DEVICE empty to use a GPU when there is one")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--DEVICE={device}: this machine has {torch.cuda.device_count()} CUDA GPUs, "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def load_clip(model: str, device: str, model_dir: str) -> tuple[torch.nn.Module, object]:
    """clip.load with errors a user can act on. On a GPU the weights stay fp16; on the CPU, fp32."""
    import clip  # after prompt_search/__init__.py has quieted its pkg_resources warning

    model_dir = os.path.expanduser(model_dir)
    if model in clip.available_models():
        url = clip.clip._MODELS[model]
        weights = os.path.join(model_dir, os.path.basename(url))
        try:
            return _quiet_load(model, device, download_root=model_dir)
        except (urllib.error.URLError, OSError) as error:
            raise UserError(
                f"CLIP weights for {model} are not at {weights} and could not be downloaded from {url} "
                f"({error}). Download that file and put it at {weights}, or set --MODEL=path/to/checkpoint.pt"
            ) from None
    if not os.path.isfile(model):
        raise UserError(f"--MODEL={model} is neither a CLIP model name ({', '.join(clip.available_models())}), "
                        "an existing checkpoint file, nor open_clip:ARCH/PRETRAINED")
    return _load_checkpoint(model, device)


def _quiet_load(model: str, device: str, **kwargs):
    import clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # clip.load tries the deprecated torch.jit.load first
        return clip.load(model, device=device, jit=False, **kwargs)


def _load_checkpoint(path: str, device: str) -> tuple[torch.nn.Module, object]:
    """What clip.load(path, jit=False) gives, without unpickling anything but tensors.

    clip.load tries torch.jit.load and then a plain torch.load, which unpickles whatever the file holds unless torch
    defaults to weights_only (2.6 and later, and not when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set). Here a pickle is
    only read with weights_only=True, and torch.jit.load is kept for TorchScript archives (OpenAI's own files).
    """
    from clip.clip import _transform
    from clip.model import build_model

    if os.path.getsize(path) == 0:
        raise UserError(f"--MODEL={path} is not a CLIP checkpoint: the file is empty")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
                state_dict = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message advises weights_only=False: never for a file of unknown origin
        raise UserError(f"--MODEL={path} is not a CLIP checkpoint: it holds Python objects other than tensors, "
                        "which are not loaded (loading them could run code from the file)") from None
    except Exception as error:  # torch's readers raise many kinds for a file of another format (IndexError for text)
        raise UserError(f"--MODEL={path} is not a CLIP checkpoint: neither a torch.save file nor a TorchScript "
                        f"archive ({error_line(error)})") from None
    if not isinstance(state_dict, dict):
        raise UserError(f"--MODEL={path} is not a CLIP checkpoint: it holds a {type(state_dict).__name__}, "
                        "not a state dict")
    try:
        model = build_model(state_dict).to(device)
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError, AttributeError) as error:
        raise UserError(f"--MODEL={path} is not a CLIP checkpoint: its state dict does not make a CLIP model "
                        f"({error_line(error)})") from None
    if device == "cpu":
        model.float()
    return model, _transform(model.visual.input_resolution)


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive (torch.jit.save) rather than a torch.save file: both are zip files, only it has code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
