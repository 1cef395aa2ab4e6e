"""LAION's aesthetic predictor, read from a checkpoint in the format LAION publishes, applied to image vectors.

Two formats, both PyTorch state dicts applied to the L2-normalised CLIP image vector:
  - LAION-AI/aesthetic-predictor's linear heads (sa_0_4_vit_b_32_linear.pth, sa_0_4_vit_l_14_linear.pth, ...):
    one nn.Linear(d, 1), keys `weight` (1 x d) and `bias`;
  - christophschuhmann/improved-aesthetic-predictor's MLP (sac+logos+ava1-l14-linearMSE.pth, for ViT-L/14):
    nn.Sequential under `layers`: Linear(768, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64), Dropout,
    Linear(64, 16), Linear(16, 1), no activation between them (as published), so `layers.{0,2,4,6,7}`.
Read with torch.load(weights_only=True): tensors only, nothing in the file is executed. The layers are applied in
numpy, so scoring needs no torch beyond reading the file.
"""

from dataclasses import dataclass

import numpy as np
import torch  # step 4 runs where requirements.txt is installed; the query path never imports this module

from prompt_search.errors import UserError

LINEAR_KEYS = {"weight", "bias"}
MLP_LAYERS = (0, 2, 4, 6, 7)  # the Linear layers of the improved predictor's nn.Sequential


@dataclass(frozen=True)
class AestheticModel:
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight out x in, bias out) applied in turn
    path: str

    @property
    def dimension(self) -> int:
        return self.layers[0][0].shape[1]

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """The predicted score of each vector (normalised first, as the predictor was trained)."""
        out = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
        for weight, bias in self.layers:
            out = out @ weight.T + bias
        return out[:, 0].astype(np.float32)


def load_aesthetic(path: str, dimension: int) -> AestheticModel:
    """The predictor at path for vectors of this dimension, or a UserError in one line saying what is wrong."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"AESTHETIC_MODEL {path} not found: download LAION's aesthetic predictor for this "
                        "model (README: Triage) or set AESTHETIC_MODEL=\"\"") from None
    except Exception as error:  # torch raises many kinds for a file that is not a checkpoint
        raise UserError(f"AESTHETIC_MODEL {path} is not a PyTorch checkpoint: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise UserError(f"AESTHETIC_MODEL {path} holds no state dict of LAION's aesthetic predictor")
    names = set(state)
    if names == LINEAR_KEYS:
        keys = [("weight", "bias")]
    elif names == {f"layers.{i}.{part}" for i in MLP_LAYERS for part in ("weight", "bias")}:
        keys = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in MLP_LAYERS]
    else:
        raise UserError(f"AESTHETIC_MODEL {path} is not LAION's aesthetic predictor (a linear head or the improved "
                        f"MLP): it holds {', '.join(sorted(names)[:6])}")
    layers = tuple((state[w].float().numpy(), state[b].float().numpy()) for w, b in keys)
    for number, (weight, bias) in enumerate(layers):
        feeds = number == 0 or weight.ndim == 2 and weight.shape[1] == layers[number - 1][0].shape[0]
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or not feeds:
            raise UserError(f"AESTHETIC_MODEL {path}: its layer {keys[number][0]} of shape {tuple(weight.shape)} "
                            f"(bias {tuple(bias.shape)}) does not follow the one before")
    model = AestheticModel(layers, path)
    if model.dimension != dimension or layers[-1][0].shape[0] != 1:
        raise UserError(f"AESTHETIC_MODEL {path} scores {model.dimension}-d vectors, but the index holds "
                        f"{dimension}-d ones: use LAION's predictor for this index's CLIP model")
    return model
