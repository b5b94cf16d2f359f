"""Turning ``--weights DEFAULT|none|NAME|PATH`` into a weights identity, and loading local files safely."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from .spec import Weights

NONE = Weights(kind="none", identity="none(seed=0)")
# Random-init weights are reproducible: the generator is seeded before every build.
INIT_SEED = 0


def is_file_choice(choice: str) -> bool:
    return os.sep in choice or choice.endswith((".pth", ".pt", ".bin", ".safetensors")) or Path(choice).is_file()


def file_weights(choice: str) -> Weights:
    path = Path(choice).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {choice} does not exist: give a state-dict file, DEFAULT or none")
    return Weights(kind="file", identity=f"file:sha256:{file_sha256(path)}", path=str(path.resolve()))


def file_sha256(path: Path) -> str:
    """Hash a weights file, memoised per (path, size, mtime) so large files are read once."""
    from ..config import user_cache_dir
    from ..files import sha256_file, write_json

    stat = path.stat()
    memo = user_cache_dir() / "weights-sha256.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = sha256_file(path)
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            write_json(memo, known, indent=None)
        except OSError:
            pass  # the memo is an optimisation only
    return known[key]


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling arbitrary objects (``weights_only=True`` or safetensors)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(
            f"cannot read weights file {path} as a state dict ({str(err).splitlines()[0][:120]}): "
            "save it with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} holds no state dict of tensors: save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})")
        raise WeightsError(f"weights {source} do not fit this architecture: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def offline_message(what: str, filename: str, url: str, where: Path) -> str:
    return (
        f"pretrained weights {what} are not cached and cannot be downloaded (offline): "
        f"put {filename} (from {url}) into {where}/, or use --weights PATH for a local state dict, "
        "or --weights none for random init"
    )


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"
