"""Turning ``--weights DEFAULT|none|NAME|PATH`` into a weights identity, and loading local files safely."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import warnings
from pathlib import Path
from urllib.error import URLError

import torch
from safetensors.torch import load_file
from torch import nn

from featcache.backbones.spec import Weights
from featcache.core.errors import WeightsError
from featcache.core.files import sha256_file, write_json
from featcache.core.paths import user_cache_dir

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


def hub_offline_message(what: str, repo_id: str, files: str, fetch: str) -> str:
    """Weights held in the Hugging Face cache (timm, OpenCLIP): name the cache entry, where it goes, and how to fill it."""
    import huggingface_hub.constants as hub  # huggingface_hub: timm's, loaded with it

    entry = Path(hub.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    return (
        f"pretrained {what} are not cached and cannot be downloaded (offline): put the Hugging Face cache entry "
        f"{entry.name} ({files} of https://huggingface.co/{repo_id}) into {entry.parent}/: on a connected machine run "
        f"`{fetch}` and copy that folder from its $HF_HOME/hub (default ~/.cache/huggingface/hub), "
        "or use --weights PATH for a local state dict, or --weights none for random init"
    )


def hub_repo(hub_id: str) -> str:
    """``org/name`` of a Hugging Face id that may carry a file name or a trailing slash (OpenCLIP writes both)."""
    return "/".join(hub_id.strip("/").split("/")[:2])


@contextlib.contextmanager
def hub_offline(offline: bool):
    """Around a build that may download: huggingface_hub's offline flag set for this build only (the hub reads it on
    every request: no retries when there is no network), and its log lines and warnings kept quiet; all restored."""
    import huggingface_hub.constants as hub  # huggingface_hub: timm's, loaded with it

    quiet = logging.getLogger("huggingface_hub")
    level, before = quiet.level, hub.HF_HUB_OFFLINE
    quiet.setLevel(logging.ERROR)
    hub.HF_HUB_OFFLINE = before or offline
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub.HF_HUB_OFFLINE = before
        quiet.setLevel(level)


def is_offline_error(err: BaseException) -> bool:
    """The weights file is not in the cache and the network cannot fetch it (here or in a cause)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled  # huggingface_hub: timm's, loaded with it

    kinds: tuple[type[BaseException], ...] = (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError,
                                              TimeoutError, socket.gaierror, URLError)
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError  # requests: huggingface_hub's, loaded with it

        kinds += (RequestsConnectionError,)
    except ImportError:
        pass
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kinds):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def build_error(what: str, err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"cannot build {what} ({type(err).__name__}: {first})"
