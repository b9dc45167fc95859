"""Configuration of a text-to-image model in diffusers' layout, as frozen values. Pure Python.

A diffusers checkpoint is a directory with `model_index.json` naming its parts, each in its own
subfolder: `transformer/` (the diffusion transformer), `text_encoder/` + `tokenizer/` (CLIP),
`text_encoder_2/` + `tokenizer_2/` (T5), `vae/` and `scheduler/`. FLUX.1 dev and schnell share
this layout; dev has the guidance embedding (`guidance_embeds`), schnell does not.

Placement, the API's request checks and the catalog read these on machines that never load a
tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.errors import InvalidRequestError, ModelFormatError, UnsupportedModelError
from tandem.model.config import read_config_json
from tandem.model.quantization import QUANTIZE_CHOICES

MODEL_INDEX = "model_index.json"
SUPPORTED_PIPELINES = ("FluxPipeline",)
SUPPORTED_TRANSFORMERS = ("FluxTransformer2DModel",)


@dataclass(frozen=True)
class FluxTransformerConfig:
    """`transformer/config.json` of a FLUX.1 checkpoint (diffusers' FluxTransformer2DModel).

    Blocks have one global index: the `num_layers` double-stream blocks first, then the
    `num_single_layers` single-stream blocks; stages hold contiguous ranges of it."""

    in_channels: int = 64  # packed latent channels: VAE latent channels × a 2×2 patch
    out_channels: int = 64
    patch_size: int = 1
    num_layers: int = 19  # double-stream blocks
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096  # T5's hidden size
    pooled_projection_dim: int = 768  # CLIP's hidden size
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
    rope_theta: float = 10000.0
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        checks = [
            (self.num_layers >= 0 and self.num_single_layers >= 0, "block counts must not be negative"),
            (self.num_blocks > 0, "the transformer needs at least one block"),
            (self.patch_size == 1, f"patch_size {self.patch_size} is not supported (FLUX uses 1)"),
            (
                sum(self.axes_dims_rope) == self.attention_head_dim,
                f"axes_dims_rope {list(self.axes_dims_rope)} must add up to attention_head_dim "
                f"({self.attention_head_dim})",
            ),
            (all(dim % 2 == 0 for dim in self.axes_dims_rope), "every rotary axis needs an even size"),
            (self.in_channels % 4 == 0, f"in_channels ({self.in_channels}) must be 4 × the VAE's channels"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelFormatError(f"invalid transformer config: {message}")

    @property
    def inner_dim(self) -> int:
        """The width of the hidden states (3072 for FLUX.1)."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)

    @property
    def num_blocks(self) -> int:
        return self.num_layers + self.num_single_layers

    def is_double(self, block_index: int) -> bool:
        """Whether global block `block_index` is a double-stream block (else single-stream)."""
        return block_index < self.num_layers

    # Parameter counts, for placement (names follow the diffusers modules they count).
    def double_block_parameter_count(self) -> int:
        """norm1 + norm1_context (6 modulations each), joint attention over both streams with
        per-head q/k norms, and a 4× GELU feed-forward per stream."""
        dim, head = self.inner_dim, self.attention_head_dim
        modulation = 2 * (dim * 6 * dim + 6 * dim)
        attention = 2 * (4 * (dim * dim + dim) + 2 * head)  # q, k, v, out per stream; q/k norms
        feed_forward = 2 * (dim * 4 * dim + 4 * dim + 4 * dim * dim + dim)
        return modulation + attention + feed_forward

    def single_block_parameter_count(self) -> int:
        """norm (3 modulations), q/k/v with per-head norms, proj_mlp, and proj_out over both."""
        dim, mlp, head = self.inner_dim, self.mlp_hidden_dim, self.attention_head_dim
        modulation = dim * 3 * dim + 3 * dim
        attention = 3 * (dim * dim + dim) + 2 * head
        return modulation + attention + (dim * mlp + mlp) + ((dim + mlp) * dim + dim)

    def block_parameter_count(self, block_index: int) -> int:
        if self.is_double(block_index):
            return self.double_block_parameter_count()
        return self.single_block_parameter_count()

    def block_linear_weight_count(self, block_index: int) -> int:
        """The weights of a block's linear projections, biases and norms not counted: what
        `quantize` holds quantized (modulations, attention, feed-forward / MLP)."""
        dim, mlp = self.inner_dim, self.mlp_hidden_dim
        if self.is_double(block_index):
            return 2 * (6 * dim * dim) + 2 * (4 * dim * dim) + 2 * (8 * dim * dim)
        return 3 * dim * dim + 3 * dim * dim + dim * mlp + (dim + mlp) * dim

    def embedder_parameter_count(self) -> int:
        """x_embedder and context_embedder: what only the first stage holds."""
        dim = self.inner_dim
        return (self.in_channels * dim + dim) + (self.joint_attention_dim * dim + dim)

    def conditioning_parameter_count(self) -> int:
        """time_text_embed (timestep, guidance for dev, pooled text): every stage holds a copy,
        so each computes the step's conditioning vector itself instead of receiving it."""
        dim = self.inner_dim
        two_layers = (256 * dim + dim) + (dim * dim + dim)
        embeddings = two_layers * (2 if self.guidance_embeds else 1)
        return embeddings + (self.pooled_projection_dim * dim + dim) + (dim * dim + dim)

    def head_parameter_count(self) -> int:
        """norm_out (scale and shift) and proj_out: what only the last stage holds."""
        dim = self.inner_dim
        return (dim * 2 * dim + 2 * dim) + (dim * self.out_channels + self.out_channels)

    def total_parameter_count(self) -> int:
        blocks = sum(self.block_parameter_count(index) for index in range(self.num_blocks))
        return (
            self.embedder_parameter_count()
            + self.conditioning_parameter_count()
            + blocks
            + self.head_parameter_count()
        )

    def block_flops(self, block_index: int, image_tokens: int, text_tokens: int) -> int:
        """Matrix FLOPs of one block for one image: every projection (2 per parameter per token
        it reads) and attention (QKᵀ and PV over the joint sequence)."""
        dim, mlp = self.inner_dim, self.mlp_hidden_dim
        tokens = image_tokens + text_tokens
        attention = 2 * 2 * tokens * tokens * dim
        if self.is_double(block_index):
            per_stream = 4 * dim * dim + 2 * dim * 4 * dim  # q, k, v, out; feed-forward in and out
            return 2 * per_stream * tokens + attention
        projections = 3 * dim * dim + dim * mlp + (dim + mlp) * dim
        return 2 * projections * tokens + attention

    def step_flops(self, image_tokens: int, text_tokens: int) -> int:
        """Matrix FLOPs of one denoising step for one image (embedders and head included)."""
        blocks = sum(self.block_flops(index, image_tokens, text_tokens) for index in range(self.num_blocks))
        dim = self.inner_dim
        ends = 2 * (
            image_tokens * (self.in_channels + self.out_channels) + text_tokens * self.joint_attention_dim
        )
        return blocks + ends * dim


@dataclass(frozen=True)
class FlowMatchConfig:
    """`scheduler/scheduler_config.json`: FLUX's flow-matching Euler schedule. dev shifts the
    sigmas by the image size (`use_dynamic_shifting`, mu from the token count); schnell does not."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096

    def mu(self, image_tokens: int) -> float:
        """The sigma shift for an image of `image_tokens` packed latent tokens: a line through
        (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift), as FluxPipeline does."""
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_tokens * slope + (self.base_shift - slope * self.base_image_seq_len)


@dataclass(frozen=True)
class VaeConfig:
    """`vae/config.json`: the autoencoder that turns latents into pixels."""

    latent_channels: int = 16
    scale_factor: int = 8  # pixels per latent, 2 ** (len(block_out_channels) - 1)
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159


@dataclass(frozen=True)
class ImageLimits:
    """What a request may ask of this model (checked by `image_request.check_image_request`)."""

    pixel_multiple: int = 16  # sizes go by 2 latents (a packed 2×2 patch) × the VAE's scale
    max_side: int = 2048  # FLUX.1 is trained up to about 2 megapixels
    max_steps: int = 100
    max_guidance: float = 20.0
    max_images: int = 10  # n, as OpenAI's images API allows


@dataclass(frozen=True)
class ImageModelConfig:
    """A whole text-to-image checkpoint: its transformer, VAE, schedule, text encoders' lengths,
    the parameter counts of the parts placement must put somewhere, and request defaults."""

    name: str
    transformer: FluxTransformerConfig
    scheduler: FlowMatchConfig
    vae: VaeConfig
    clip_max_length: int = 77  # CLIP's tokenizer.model_max_length
    max_sequence_length: int = 512  # T5 tokens of the prompt (padded): 512 for dev, 256 for schnell
    default_steps: int = 28
    default_guidance: float = 3.5
    default_size: int = 1024
    limits: ImageLimits = ImageLimits()
    text_encoder_parameters: int = 0  # CLIP, from its safetensors headers (0 when absent)
    text_encoder_2_parameters: int = 0  # T5
    vae_parameters: int = 0
    checkpoint_dtype: str = "bfloat16"
    # How the transformer's weights are stored quantized ("bitsandbytes", "MLX affine 4-bit"),
    # from its config.json; None: 16 or 32 bits, the only kind the image engine reads.
    stored_quantization: str | None = None

    @property
    def variant(self) -> str:
        """ "dev" (guidance-distilled, with the guidance embedding) or "schnell" (timestep-distilled)."""
        return "dev" if self.transformer.guidance_embeds else "schnell"

    @property
    def latent_channels(self) -> int:
        return self.transformer.in_channels // 4


def is_image_model_dir(path: str | Path) -> bool:
    """Whether `path` is a diffusers pipeline directory (it has a model_index.json)."""
    return (Path(path) / MODEL_INDEX).is_file()


def load_image_model_config(model_dir: str | Path) -> ImageModelConfig:
    """Read a FLUX.1 checkpoint directory in diffusers' layout (configs only, no weights)."""
    root = Path(model_dir)
    if not is_image_model_dir(root):
        raise ModelFormatError(f"no {MODEL_INDEX} in {root}: is this a diffusers checkpoint directory?")
    index = read_config_json(root / MODEL_INDEX)
    pipeline = index.get("_class_name")
    if pipeline not in SUPPORTED_PIPELINES:
        raise UnsupportedModelError(
            f"unsupported image pipeline {pipeline!r}; supported: {', '.join(SUPPORTED_PIPELINES)}"
        )
    for part in (
        "transformer",
        "vae",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
    ):
        if not (root / part).is_dir():
            raise ModelFormatError(f"{root} has no {part}/ folder, which {pipeline} needs")
    transformer = parse_flux_transformer_config(_read(root / "transformer" / "config.json"))
    scheduler = parse_flow_match_config(_read(root / "scheduler" / "scheduler_config.json"))
    vae = parse_vae_config(_read(root / "vae" / "config.json"))
    if vae.latent_channels * 4 != transformer.in_channels:
        raise ModelFormatError(
            f"the VAE has {vae.latent_channels} latent channels but the transformer takes "
            f"{transformer.in_channels} (4 × the latent channels)"
        )
    guidance = transformer.guidance_embeds
    return ImageModelConfig(
        name=root.name,
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        clip_max_length=_clip_max_length(root),
        # BFL's reference runs schnell with 256 T5 tokens and dev with 512.
        max_sequence_length=512 if guidance else 256,
        default_steps=28 if guidance else 4,
        default_guidance=3.5 if guidance else 0.0,
        limits=ImageLimits(pixel_multiple=2 * vae.scale_factor),
        text_encoder_parameters=safetensors_parameter_count(root / "text_encoder"),
        text_encoder_2_parameters=safetensors_parameter_count(root / "text_encoder_2"),
        vae_parameters=safetensors_parameter_count(root / "vae"),
        checkpoint_dtype=str(_read(root / "transformer" / "config.json").get("torch_dtype") or "bfloat16"),
        stored_quantization=stored_quantization(_read(root / "transformer" / "config.json")),
    )


def stored_quantization(raw: dict[str, Any]) -> str | None:
    """How a transformer config says its weights are stored quantized: diffusers' and
    transformers' `quantization_config` (bitsandbytes, torchao, GGUF, ...) or MLX's `quantization`."""
    declared = raw.get("quantization_config")
    if isinstance(declared, dict):
        return str(declared.get("quant_method") or "quantization_config")
    mlx = raw.get("quantization")
    if isinstance(mlx, dict):
        return f"MLX affine {mlx.get('bits', '?')}-bit"
    return None


def loaded_image_quantize(config: ImageModelConfig, quantize: str | None) -> str | None:
    """The format the transformer's blocks load in: `quantize` (int8, int4) checked against the
    checkpoint, or None for its own 16/32-bit weights. A checkpoint stored quantized is refused
    in one line either way (the image engine reads none of those formats)."""
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise InvalidRequestError(
            f"unsupported quantize {quantize!r} for an image model; supported: {', '.join(QUANTIZE_CHOICES)}"
        )
    if config.stored_quantization is None:
        return quantize
    if quantize is not None:
        raise InvalidRequestError(
            f"quantize {quantize}: this checkpoint's transformer is already quantized "
            f"({config.stored_quantization}); quantize applies to 16- and 32-bit checkpoints"
        )
    raise UnsupportedModelError(
        f"this checkpoint's transformer is stored quantized ({config.stored_quantization}), which "
        "the image engine does not read; give a 16- or 32-bit FLUX.1 checkpoint (quantize: int8 or "
        "int4 quantizes it as it loads)"
    )


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFormatError(f"missing {path.parent.name}/{path.name} in {path.parent.parent}")
    return read_config_json(path)


def parse_flux_transformer_config(raw: dict[str, Any]) -> FluxTransformerConfig:
    """FluxTransformerConfig from the dictionary of `transformer/config.json`."""
    name = raw.get("_class_name", "FluxTransformer2DModel")
    if name not in SUPPORTED_TRANSFORMERS:
        raise UnsupportedModelError(
            f"unsupported transformer {name!r}; supported: {', '.join(SUPPORTED_TRANSFORMERS)}"
        )
    defaults = FluxTransformerConfig()
    try:
        in_channels = int(raw.get("in_channels", defaults.in_channels))
        return FluxTransformerConfig(
            in_channels=in_channels,
            out_channels=int(raw.get("out_channels") or in_channels),
            patch_size=int(raw.get("patch_size", 1)),
            num_layers=int(raw.get("num_layers", defaults.num_layers)),
            num_single_layers=int(raw.get("num_single_layers", defaults.num_single_layers)),
            attention_head_dim=int(raw.get("attention_head_dim", defaults.attention_head_dim)),
            num_attention_heads=int(raw.get("num_attention_heads", defaults.num_attention_heads)),
            joint_attention_dim=int(raw.get("joint_attention_dim", defaults.joint_attention_dim)),
            pooled_projection_dim=int(raw.get("pooled_projection_dim", defaults.pooled_projection_dim)),
            guidance_embeds=bool(raw.get("guidance_embeds", False)),
            axes_dims_rope=tuple(int(d) for d in raw.get("axes_dims_rope", defaults.axes_dims_rope)),
        )
    except (TypeError, ValueError) as error:
        raise ModelFormatError(f"transformer/config.json has a bad value: {error}") from None


def parse_flow_match_config(raw: dict[str, Any]) -> FlowMatchConfig:
    name = raw.get("_class_name", "FlowMatchEulerDiscreteScheduler")
    if name != "FlowMatchEulerDiscreteScheduler":
        raise UnsupportedModelError(
            f"unsupported scheduler {name!r}; supported: FlowMatchEulerDiscreteScheduler"
        )
    defaults = FlowMatchConfig()
    try:
        return FlowMatchConfig(
            num_train_timesteps=int(raw.get("num_train_timesteps", defaults.num_train_timesteps)),
            shift=float(raw.get("shift", defaults.shift)),
            use_dynamic_shifting=bool(raw.get("use_dynamic_shifting", False)),
            base_shift=float(raw.get("base_shift", defaults.base_shift)),
            max_shift=float(raw.get("max_shift", defaults.max_shift)),
            base_image_seq_len=int(raw.get("base_image_seq_len", defaults.base_image_seq_len)),
            max_image_seq_len=int(raw.get("max_image_seq_len", defaults.max_image_seq_len)),
        )
    except (TypeError, ValueError) as error:
        raise ModelFormatError(f"scheduler/scheduler_config.json has a bad value: {error}") from None


def parse_vae_config(raw: dict[str, Any]) -> VaeConfig:
    try:
        blocks = raw.get("block_out_channels") or [128, 256, 512, 512]
        shift = raw.get("shift_factor")
        return VaeConfig(
            latent_channels=int(raw.get("latent_channels", 16)),
            scale_factor=2 ** (len(blocks) - 1),
            scaling_factor=float(raw.get("scaling_factor", 0.3611)),
            shift_factor=float(shift) if shift is not None else 0.0,
        )
    except (TypeError, ValueError) as error:
        raise ModelFormatError(f"vae/config.json has a bad value: {error}") from None


def _clip_max_length(root: Path) -> int:
    """CLIP's prompt length: the tokenizer's model_max_length, else the text encoder's positions."""
    tokenizer_config = root / "tokenizer" / "tokenizer_config.json"
    if tokenizer_config.is_file():
        length = read_config_json(tokenizer_config).get("model_max_length")
        if isinstance(length, int) and 0 < length < 10**6:
            return length
    encoder_config = root / "text_encoder" / "config.json"
    if encoder_config.is_file():
        return int(read_config_json(encoder_config).get("max_position_embeddings", 77))
    return 77


def safetensors_parameter_count(folder: Path) -> int:
    """Parameters in the safetensors files of `folder`, from their headers alone (0 when none)."""
    count = 0
    for path in sorted(folder.glob("*.safetensors")):
        for name, entry in _safetensors_header(path).items():
            if name == "__metadata__":
                continue
            size = 1
            for extent in entry.get("shape", ()):
                size *= int(extent)
            count += size
    return count


def _safetensors_header(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError):
        raise ModelFormatError(f"{path.parent.name}/{path.name} is not a readable safetensors file") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path.parent.name}/{path.name} has a bad safetensors header")
    return header
