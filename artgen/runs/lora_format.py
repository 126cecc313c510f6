"""LoRA adapter files in the layouts other tools read.

- **diffusers** (``lora/pytorch_lora_weights.safetensors``): the layout that diffusers'
  own ``save_lora_weights`` writes for a peft-adapted UNet and ``load_lora_weights``
  reads: every key is peft's module path under ``unet.``, ending in ``lora_A.weight`` /
  ``lora_B.weight``, with the LoraConfig in the safetensors header.

  Departure from diffusers' training scripts, which pass ``get_peft_model_state_dict``
  through ``convert_state_dict_to_diffusers`` first: that renames only the attention
  projections (``to_k.lora_A`` -> ``to_k.lora.down``) and leaves the convolutions'
  peft names, and diffusers' loader decides from the *first* key whether to rename back.
  A file that adapts both (artgen's default, attention and conv) therefore lost every
  attention adapter on loading (issue 14). Peft's names everywhere load whole.
- **kohya** (one ``.safetensors``, what ComfyUI, the A1111 web UI, SD.Next and InvokeAI
  read): ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` and a
  scalar ``.alpha`` per module (scale alpha / rank); convolutions as LoCon (3x3 down,
  1x1 up). The key names are those of diffusers' ``convert_state_dict_to_kohya``; the
  alpha is the run's own (that function writes alpha = rank, wrong when lora_alpha is
  set), and diffusers' kohya reader (``_convert_non_diffusers_lora_to_diffusers``) reads
  it back, which the tests check.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

_OLD_NAMES = ((".lora.down.", ".lora_A."), (".lora.up.", ".lora_B."))


def peft_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter tensors with peft's names only: ``x.lora.down.weight`` (the attention
    names of diffusers' conversion, as in files artgen wrote before the fix) becomes
    ``x.lora_A.weight``; peft names pass through."""
    out = {}
    for k, v in state.items():
        for old, new in _OLD_NAMES:
            k = k.replace(old, new)
        out[k] = v
    return out


def adapted_modules(state: Mapping[str, torch.Tensor]) -> set[str]:
    """The module paths that a peft-named adapter state dict adapts."""
    return {k.split(".lora_A.")[0] for k in peft_keys(state) if ".lora_A." in k}


def to_diffusers(unet_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's ``get_peft_model_state_dict(unet)`` as ``save_lora_weights`` wants it (it
    adds the ``unet.`` prefix itself): unchanged, and never through
    ``convert_state_dict_to_diffusers`` (see the module docstring)."""
    return dict(peft_keys(unet_state))


def kohya_prefix(component: str, family: str) -> str:
    """kohya's key prefix for a pipeline component: ``lora_unet_``; one text encoder is
    ``lora_te_``, SDXL's two are ``lora_te1_`` and ``lora_te2_`` (what sd-scripts writes
    and diffusers' ``_convert_non_diffusers_lora_to_diffusers`` reads)."""
    if component == "unet":
        return "lora_unet_"
    if family == "sdxl":
        return "lora_te1_" if component == "text_encoder" else "lora_te2_"
    return "lora_te_"


def to_kohya(
    unet_state: Mapping[str, torch.Tensor], lora_alpha: float, prefix: str = "lora_unet_"
) -> dict[str, torch.Tensor]:
    """peft's adapter state dict of one component (the UNet unless ``prefix`` says
    another, see kohya_prefix) in kohya's single-file layout."""
    out: dict[str, torch.Tensor] = {}
    for k, v in peft_keys(unet_state).items():
        for part, kohya in ((".lora_A.", "lora_down"), (".lora_B.", "lora_up")):
            if part in k:
                module, rest = k.split(part)
                name = prefix + module.replace(".", "_")
                out[f"{name}.{kohya}.{rest}"] = v
                if kohya == "lora_down":
                    out[f"{name}.alpha"] = torch.tensor(float(lora_alpha))
                break
        else:
            raise ValueError(f"{k}: not a LoRA adapter tensor")
    return out
