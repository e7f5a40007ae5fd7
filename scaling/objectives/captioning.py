"""Captioning: an image encoder and a text decoder trained to caption (Tschannen et al. 2023, CapPa).

The encoder is the bidirectional image tower; the decoder is the causal text tower cross-attending to the
encoder's output tokens, with a head onto the tokenizer's vocabulary. The loss is teacher-forced
next-token cross-entropy over the real caption tokens (padding is masked out).

CapPa parallel prediction: per example, with probability ``captioning.parallel_fraction``, every decoder
input is the [MASK] token (one extra embedding id, ``vocab_size``), so the decoder must predict the whole
caption from the image alone. As in the paper, those rows attend without the causal mask (every position
sees every other position's state); autoregressive rows stay causal.

Besides the protocol its public API offers ``greedy_captions``, ``caption_log_likelihood`` (the
log-likelihood of any captions given their images: scoring or ranking captions; zero-shot classification
scores prompts the same way) and ``write_samples`` (an image grid with reference and generated captions).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from scaling import flops
from scaling.data.captions import caption_length, class_prompts, prompt_templates, tokenize_prompts
from scaling.data.tokenizer import get_tokenizer
from scaling.errors import ConfigError
from scaling.models.chunks import in_chunks
from scaling.models.layers import Dense
from scaling.models.parametrization import Parametrization
from scaling.models.sizes import Size, get_size
from scaling.models.transformer import ImageTower, Stacking, TextTower, pooled_layer_features
from scaling.objectives.base import BaseObjective, CaptionScorer, SampleWriter, ZeroShotScorer
from scaling.samples import as_rows, image_grid

Array = jax.Array
SAMPLE_TILE = 128  # pixels per image side in captions.png


def config_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "decoder_size": "",  # "" -> the encoder's size
            "parallel_fraction": 0.75,  # CapPa; 0.0 -> plain autoregressive captioning
        }
    )


class CaptioningModel(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        encoder_size = get_size(config.size)
        decoder_size = get_size(config.captioning.decoder_size or config.size)
        vocab = get_tokenizer(config.data.tokenizer).vocab_size
        dtype = jnp.dtype(config.model.dtype)
        self.encoder = ImageTower(
            encoder_size, image_size=config.data.image_size, patch=config.model.patch_size,
            positions=config.model.positions, dtype=dtype, rngs=rngs, stacking=Stacking.of(config.model),
        )
        self.decoder = TextTower(
            decoder_size, vocab=vocab + 1, max_len=caption_length(config.data) - 1,
            positions=config.model.positions, dtype=dtype, rngs=rngs,
            cross_attention_width=encoder_size.width, stacking=Stacking.of(config.model),
        )
        self.head = Dense((decoder_size.width,), (vocab,), ("embed", "vocab"), dtype=dtype, rngs=rngs,
                          scaling=Parametrization.of(config.model).readout(decoder_size.width))
        self.mask_id = vocab

    def encode(self, images_BHWC: Array) -> tuple[Array, list[Array]]:
        """Encoder output tokens [B, M, D] and every encoder block's output."""
        return self.encoder(images_BHWC)

    def decode(self, inputs_BL: Array, context_BMD: Array, parallel_B: Array | None = None) -> Array:
        """Next-token logits [B, L, V] for decoder inputs [B, L] given encoder tokens; rows where
        ``parallel_B`` is set attend bidirectionally (CapPa parallel prediction), the others causally."""
        out_BLD, _ = self.decoder(inputs_BL, context_BMD, parallel_B)
        return self.head(out_BLD)


def decoder_inputs(
    tokens_BT: Array, rng: Array, parallel_fraction: float, mask_id: int
) -> tuple[Array, Array]:
    """Teacher-forcing inputs tokens[:, :-1], all [MASK] on rows drawn for parallel prediction.

    Returns (inputs [B, T-1], parallel [B] bool).
    """
    parallel_B = jax.random.bernoulli(rng, parallel_fraction, (tokens_BT.shape[0],))
    inputs_BL = jnp.where(parallel_B[:, None], mask_id, tokens_BT[:, :-1])
    return inputs_BL, parallel_B


def _log_likelihood(model: CaptioningModel, context_BMD: Array, tokens_BT: Array, mask_BT: Array) -> Array:
    logits_BLV = model.decode(tokens_BT[:, :-1], context_BMD)
    log_probs_BL = -optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BT[:, 1:])
    return (log_probs_BL * mask_BT[:, 1:]).sum(axis=1)


def shared_prefix_length(tokens_KT: np.ndarray) -> int:
    """Leading tokens that every row shares, at least BOS and leaving at least one input after it."""
    differs_T = (tokens_KT != tokens_KT[:1]).any(axis=0)
    shared = int(np.argmax(differs_T)) if differs_T.any() else tokens_KT.shape[1]
    return max(1, min(shared, tokens_KT.shape[1] - 2))


def _prompt_log_likelihoods(model: CaptioningModel, context_BMD: Array, tokens_KT: np.ndarray,
                            mask_KT: np.ndarray) -> Array:
    """[B, K] ``_log_likelihood`` of each of K prompts for each image, the prompts' shared prefix decoded
    once per image (``TextTower.prefix``) and each prompt only from there on (``continue_prefix``)."""
    B, K, P = context_BMD.shape[0], tokens_KT.shape[0], shared_prefix_length(tokens_KT)
    log_probs = lambda out_NLD, targets_NL: -optax.softmax_cross_entropy_with_integer_labels(
        model.head(out_NLD), targets_NL)
    prefix_BPD, past = model.decoder.prefix(jnp.broadcast_to(tokens_KT[0, :P], (B, P)), context_BMD)
    prefix_B = log_probs(prefix_BPD[:, :-1], jnp.broadcast_to(tokens_KT[0, 1:P], (B, P - 1))).sum(axis=1)
    first_BK = jax.nn.log_softmax(model.head(prefix_BPD[:, -1]))[:, tokens_KT[:, P]] * mask_KT[:, P]
    inputs_NS = jnp.tile(tokens_KT[:, P:-1], (B, 1))  # N = B * K rows, image-major
    out_NSD = model.decoder.continue_prefix(inputs_NS, past, context_BMD)
    rest_N = (log_probs(out_NSD, jnp.tile(tokens_KT[:, P + 1:], (B, 1))) * np.tile(mask_KT[:, P + 1:], (B, 1))
              ).sum(axis=1)
    return prefix_B[:, None] + first_BK + rest_N.reshape(B, K)


def _masked_mean(x_BL: Array, weights_BL: Array) -> Array:
    return (x_BL * weights_BL).sum() / jnp.maximum(weights_BL.sum(), 1.0)


@nnx.jit
def _encode(model: CaptioningModel, images_BHWC: Array) -> Array:
    return model.encode(images_BHWC)[0]


@nnx.jit
def _next_token(model: CaptioningModel, context_BMD: Array, inputs_BL: Array, position: Array) -> Array:
    """Greedy token after ``position`` (no KV cache: the causal decoder reruns on the whole input)."""
    logits_BLV = model.decode(inputs_BL, context_BMD)
    return jnp.take(logits_BLV, position, axis=1).argmax(-1)


def train_flops(encoder: Size, decoder: Size, *, image_size: int, patch: int, text_len: int,
                vocab: int) -> float:
    """Image encoder, then the decoder over text_len - 1 teacher-forced positions (self-attention,
    cross-attention with the K/V projections of every encoder token, MLP) and the vocabulary head."""
    positions = text_len - 1
    image_encoder = flops.image_tower_forward(encoder, image_size, patch)
    encoder_tokens = flops.patches(image_size, patch)
    text_decoder = flops.transformer_forward(decoder, positions, encoder_tokens, encoder.width)
    head = flops.dense(positions, decoder.width, vocab)
    return flops.TRAIN_MULTIPLIER * (image_encoder + text_decoder + head)


class Captioning(BaseObjective, ZeroShotScorer, CaptionScorer, SampleWriter):
    name = "captioning"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.tokenizer = get_tokenizer(config.data.tokenizer)

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        c = config.captioning
        if c.decoder_size:
            get_size(c.decoder_size)
        if config.data.caption_level == "none":
            raise ConfigError(
                "data.caption_level: captioning needs captions; use short, medium or descriptive"
            )
        if not 0.0 <= c.parallel_fraction <= 1.0:
            raise ConfigError(
                f"captioning.parallel_fraction: {c.parallel_fraction} must lie in [0, 1] "
                "(0.75 is CapPa, 0 is plain autoregressive captioning)"
            )

    def init(self, rngs: nnx.Rngs) -> CaptioningModel:
        return CaptioningModel(self.config, rngs=rngs)

    def loss(self, model: CaptioningModel, batch, rng: Array):
        tokens_BT = batch["caption_tokens"]
        inputs_BL, parallel_B = decoder_inputs(
            tokens_BT, rng, self.config.captioning.parallel_fraction, model.mask_id
        )
        context_BMD, _ = model.encode(batch["image"])
        logits_BLV = model.decode(inputs_BL, context_BMD, parallel_B)
        targets_BL = tokens_BT[:, 1:]
        weights_BL = batch["caption_mask"][:, 1:].astype(jnp.float32)
        token_loss_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
        correct_BL = (logits_BLV.argmax(-1) == targets_BL).astype(jnp.float32)
        metrics = {
            "token_accuracy": _masked_mean(correct_BL, weights_BL),
            "parallel_fraction_used": parallel_B.astype(jnp.float32).mean(),
        }
        return _masked_mean(token_loss_BL, weights_BL), metrics

    def caption_log_likelihood(
        self, model: CaptioningModel, images_BHWC: Array, tokens_BT: Array, mask_BT: Array
    ) -> Array:
        """[B] sum of log p(token | earlier tokens, image) over each caption's real tokens after BOS."""
        context_BMD, _ = model.encode(images_BHWC)
        return _log_likelihood(model, context_BMD, tokens_BT, mask_BT)

    def caption_outputs(self, model: CaptioningModel, images_BHWC: Array, captions, rng: Array) -> dict:
        """``log_likelihood/<level>`` [B] of each level's reference captions ({level: (tokens [B, T],
        mask [B, T])}) given the image, and ``predicted_tokens/<level>`` [B], the tokens it sums over."""
        del rng
        context_BMD, _ = model.encode(images_BHWC)
        outputs = {}
        for level, (tokens_BT, mask_BT) in captions.items():
            outputs[f"log_likelihood/{level}"] = _log_likelihood(model, context_BMD, tokens_BT, mask_BT)
            outputs[f"predicted_tokens/{level}"] = mask_BT[:, 1:].sum(axis=1)
        return outputs

    def zero_shot_scores(self, model: CaptioningModel, images_BHWC: Array, class_names, rng: Array) -> Array:
        """[B, K]: each class's prompt log-likelihood given the image, averaged over templates. Per image
        and template, the encoder and the prompts' common prefix run once and each prompt only past it."""
        del rng
        tokenizer, limit = get_tokenizer(self.config.data.tokenizer), caption_length(self.config.data)
        prompts_per_template = []
        for template in prompt_templates(self.config.data.name):
            prompts = class_prompts(class_names, (template,))
            longest = max(len(prompt.encode()) for prompt in prompts) + 2  # BOS and EOS
            prompts_per_template.append(tokenize_prompts(tokenizer, prompts, min(longest, limit)))

        def scores(x_BHWC):
            context_BMD, _ = model.encode(x_BHWC)
            return jnp.stack([_prompt_log_likelihoods(model, context_BMD, tokens_KT, mask_KT)
                              for tokens_KT, mask_KT in prompts_per_template], axis=-1).mean(axis=-1)

        return in_chunks(scores, images_BHWC)

    def greedy_captions(self, model: CaptioningModel, images_BHWC, max_len: int | None = None) -> np.ndarray:
        """Greedy autoregressive captions [B, max_len]: BOS, tokens, EOS, then padding.

        A caption that has not ended by ``max_len`` is cut to end in EOS, as the tokenizer does.
        """
        limit = caption_length(self.config.data)
        max_len = max_len or limit
        if not 2 <= max_len <= limit:
            raise ValueError(f"max_len must lie in [2, caption length {limit}], got {max_len}")
        tok = self.tokenizer
        context_BMD = _encode(model, jnp.asarray(images_BHWC))
        tokens_BT = np.full((context_BMD.shape[0], max_len), tok.pad_id, np.int32)
        tokens_BT[:, 0] = tok.bos_id
        done_B = np.zeros(tokens_BT.shape[0], bool)
        for position in range(max_len - 1):
            next_B = np.asarray(_next_token(model, context_BMD, tokens_BT[:, :-1], jnp.int32(position)))
            tokens_BT[:, position + 1] = np.where(done_B, tok.pad_id, next_B)
            done_B |= next_B == tok.eos_id
            if done_B.all():
                return tokens_BT
        tokens_BT[~done_B, -1] = tok.eos_id
        return tokens_BT

    def write_samples(self, model: CaptioningModel, batch, rng: Array, directory) -> None:
        """``captions.png`` (the images, enlarged, numbered) and ``captions.txt`` (index, reference,
        greedy caption; tab-separated)."""
        del rng
        directory = Path(directory)
        generated_BT = self.greedy_captions(model, batch["image"])
        lines = [
            f"{i}\t{self.tokenizer.decode(reference_T)}\t{self.tokenizer.decode(generated_T)}"
            for i, (reference_T, generated_T) in enumerate(
                zip(np.asarray(batch["caption_tokens"]), generated_BT, strict=True)
            )
        ]
        (directory / "captions.txt").write_text("\n".join(lines) + "\n")
        image_grid(as_rows(np.asarray(batch["image"])), cell=SAMPLE_TILE, gap=4, numbered=True).save(
            directory / "captions.png"
        )

    def features(self, model: CaptioningModel, images_BHWC: Array, rng: Array) -> dict[str, Array]:
        del rng
        return in_chunks(lambda x_BHWC: pooled_layer_features(model.encode(x_BHWC)[1]), images_BHWC)

    def train_flops_per_example(self) -> float:
        c = self.config
        return train_flops(
            get_size(c.size), get_size(c.captioning.decoder_size or c.size),
            image_size=c.data.image_size, patch=c.model.patch_size, text_len=caption_length(c.data),
            vocab=self.tokenizer.vocab_size,
        )

