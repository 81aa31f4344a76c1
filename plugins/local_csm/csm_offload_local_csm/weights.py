"""Where CSM's weights are: a local directory, the Hugging Face cache, or not here yet.

No torch here: health checks ask these questions without loading anything.
"""

from __future__ import annotations

from pathlib import Path

from .options import DEFAULT_MODEL


def looks_like_path(model: str) -> bool:
    """A directory, not a Hugging Face id ("owner/name")."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or Path(model).exists()


def cached(model: str) -> bool:
    """Is this Hugging Face id's config in the local cache (so loading needs no network)?"""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except ValueError:  # not a valid id
        return False


#: What to do about a `model` directory that is not there or holds no model.
DIRECTORY_FIX = (
    "set model to a directory that holds a saved CSM model (config.json and the weights, "
    f"e.g. from `hf download {DEFAULT_MODEL} --local-dir DIR`) or to a Hugging Face id such as "
    f"{DEFAULT_MODEL}"
)


def missing_directory(model: str) -> str:
    """The sentence for a `model` path that is not a directory, with the fix."""
    return f"model directory {model} does not exist: {DIRECTORY_FIX}"


def weights_status(model: str) -> tuple[bool, str]:
    """Are the weights on this machine? Never downloads gigabytes to find out."""
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            return False, missing_directory(model)
        if not (path / "config.json").is_file():
            return (
                False,
                f"{path} has no config.json, so it is not a saved CSM model: {DIRECTORY_FIX}",
            )
        return True, f"weights in {path}"
    if cached(model):
        return True, f"{model} is in the Hugging Face cache"
    return False, (
        f"{model} is not downloaded: accept its licence on huggingface.co, set HF_TOKEN, and run "
        f"`hf download {model}` (or set model to a local directory)"
    )
