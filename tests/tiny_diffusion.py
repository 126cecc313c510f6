"""Tiny diffusers pipelines built in the process (the configs of diffusers' own tests),
saved with save_pretrained, so artgen loads them exactly as it loads a real base model."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_tokenizer(folder: Path, max_length: int = 16):
    """A character-level CLIP BPE vocabulary written by the test (no hub download)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length
    )


# The conditional UNet of both tiny latent pipelines, less its attention and conditioning.
TINY_UNET = dict(
    block_out_channels=(4, 8),
    layers_per_block=1,
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)


def tiny_vae():
    """The VAE of both tiny latent pipelines: 4 latent channels, one halving."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )


def tiny_sd(folder: Path) -> Path:
    """A Stable-Diffusion-style pipeline: UNet2DConditionModel, VAE, CLIP text encoder."""
    from diffusers import (
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        cross_attention_dim=32,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=80,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(folder / "_tok"),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def tiny_sdxl(folder: Path) -> Path:
    """A Stable-Diffusion-XL-style pipeline (the configs of diffusers' SDXL tests, smaller):
    a UNet with ``addition_embed_type="text_time"`` (size and crop micro-conditioning), two
    CLIP text encoders whose penultimate states are concatenated (16 + 16 = the UNet's
    cross-attention width), the second with a pooled projection."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        attention_head_dim=(2, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 4 + 16,  # six time ids + pooled text
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    vae = tiny_vae()

    def clip_config(**kw) -> CLIPTextConfig:
        return CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=16,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=80,
            hidden_act="gelu",
            **kw,
        )

    text_encoder = CLIPTextModel(clip_config())
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(projection_dim=16))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    tok = tiny_tokenizer(folder / "_tok", max_length=32)
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tok,
        tokenizer_2=tok,
        scheduler=scheduler,
    )
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"
