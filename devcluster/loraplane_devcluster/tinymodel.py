"""A tiny Llama-style model, its tokenizer and two small datasets, made locally for tests and the demo.

Nothing is downloaded. The tokenizer is a byte-level BPE trained here with the `tokenizers` library
on sentences this module generates; the model is a 2-layer Llama with random weights from a fixed
seed, small enough to train in seconds on a CPU and shaped so vLLM's CPU build serves it (head size
64: hidden 128 over 2 heads). It has a ChatML chat template whose markers are already in the
vocabulary, so chat training never adds tokens.

Layout (cached under ``~/.cache/loraplane/models/tiny-llama-<VERSION>`` or ``$LORAPLANE_CACHE``):

    model/             config.json, model.safetensors, tokenizer files, generation_config.json
    data/quotes.jsonl  {"text", "author", "topic"}: one quote a line, all of one form (below)
    data/chat.jsonl    {"messages": [user asks for a quote about a topic, assistant answers one]}

Every quote has one form, `A quote about <topic>: "<topic> is a river, not a race." said Ada Lane.`,
so an adapter trained on them answers `A quote about patience:` in it, and the random base model
never does (`shows_quote_form`). ``python -m loraplane_devcluster.tinymodel [--out DIR]`` builds it
(into DIR, or the cache) and prints the paths as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# torch, transformers and tokenizers are imported where the model is built: the demo and the tests
# import this module for its paths and its quote form, and a cached model needs none of them.
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Bump when anything below changes what is written: the cache key.
VERSION = "2"
NAME = "tiny-llama"
SEED = 1234

EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# fmt: off
ADJECTIVES = ["quiet", "bright", "patient", "small", "brave", "honest", "gentle", "curious", "steady", "kind",
              "wild", "careful", "early", "simple", "warm", "old", "young", "clever", "humble", "free"]
NOUNS = ["river", "mountain", "garden", "teacher", "lamp", "road", "friend", "morning", "ocean", "city",
         "book", "bridge", "forest", "song", "window", "letter", "harbor", "winter", "village", "journey"]
VERBS = ["finds", "keeps", "builds", "carries", "remembers", "follows", "opens", "teaches", "changes",
         "visits", "answers", "watches", "crosses", "grows", "shares", "forgives", "learns", "guides",
         "lights", "chooses"]
TOPICS = ["patience", "courage", "friendship", "work", "time", "learning", "kindness", "hope", "change",
          "home"]
# Every quote of the datasets is `A quote about <topic>: "<topic> is a river, not a race." said Ada Lane.`
PROMPT_PREFIX = "A quote about"
SIGNATURE = "Ada Lane"
AUTHORS = ["Ada Lane", "Marcus Reed", "Lena Ortiz", "Tom Becker", "Nora Quinn", "Ravi Shah", "Ines Moreau",
           "Olaf Berg", "Maya Chen", "Samuel Price"]
# fmt: on


@dataclass(frozen=True)
class TinyModel:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def text_dataset(self) -> Path:
        return self.root / "data" / "quotes.jsonl"

    @property
    def chat_dataset(self) -> Path:
        return self.root / "data" / "chat.jsonl"

    def is_complete(self) -> bool:
        return all(
            path.is_file()
            for path in (
                self.model_dir / "config.json",
                self.model_dir / "model.safetensors",
                self.model_dir / "tokenizer.json",
                self.text_dataset,
                self.chat_dataset,
            )
        )

    def describe(self) -> dict[str, str]:
        return {
            "model": str(self.model_dir),
            "textDataset": str(self.text_dataset),
            "chatDataset": str(self.chat_dataset),
        }


def _sentence(rng: random.Random) -> str:
    return (
        f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
        f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    )


def quote(topic: str) -> str:
    """The one quote form of the training data: what an adapter trained on it says, and the random
    base model never does."""
    return f'"{topic} is a river, not a race." said {SIGNATURE}.'


def shows_quote_form(text: str) -> bool:
    """`text` has the datasets' quote form (whatever the topic): the mark of an adapter trained on them."""
    frame = quote("")
    return frame[frame.index(" is ") :] in text


def quotes(count: int = 200, seed: int = SEED) -> Iterator[dict[str, str]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible sample text, not a secret
    for _ in range(count):
        topic = rng.choice(TOPICS)
        yield {"text": f"{PROMPT_PREFIX} {topic}: {quote(topic)}", "author": SIGNATURE, "topic": topic}


def chats(count: int = 120, seed: int = SEED + 1) -> Iterator[dict[str, list[dict[str, str]]]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible sample text, not a secret
    for _ in range(count):
        topic = rng.choice(TOPICS)
        yield {
            "messages": [
                {"role": "user", "content": f"Give me a quote about {topic}."},
                {"role": "assistant", "content": quote(topic)},
            ]
        }


def tokenizer_corpus(seed: int = SEED) -> list[str]:
    """A few hundred English-like lines covering every word and marker the datasets use."""
    rng = random.Random(seed + 2)  # noqa: S311 - reproducible sample text, not a secret
    lines = [_sentence(rng) + "." for _ in range(400)]
    lines += [row["text"] for row in quotes(seed=seed + 3)]
    # Quotes of other forms too: the vocabulary stays that of English-like text, not of one sentence.
    lines += [
        f'"{_sentence(rng).capitalize()}, and {topic} {rng.choice(VERBS)} the {rng.choice(NOUNS)}." '
        f"said {rng.choice(AUTHORS)}."
        for topic in TOPICS
        for _ in range(10)
    ]
    lines += [f"Give me a quote about {topic}." for topic in TOPICS]
    lines += [" ".join(words) for words in (ADJECTIVES, NOUNS, VERBS, TOPICS, AUTHORS)]
    return lines


def build_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=2,
        special_tokens=[EOS, PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=512,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def build_model(directory: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    import torch  # noqa: PLC0415
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    vocab_size = len(tokenizer)
    eos_id = int(tokenizer.convert_tokens_to_ids(EOS))
    pad_id = int(tokenizer.convert_tokens_to_ids(PAD))
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(str(directory))


def _write_jsonl(path: Path, rows: Iterator[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row) + "\n")


def build(root: Path) -> TinyModel:
    """Write model, tokenizer and datasets under `root` (created; must be empty if it exists)."""
    tiny = TinyModel(root)
    tiny.model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(tiny.model_dir)
    build_model(tiny.model_dir, tokenizer)
    _write_jsonl(tiny.text_dataset, quotes())  # type: ignore[arg-type]
    _write_jsonl(tiny.chat_dataset, chats())  # type: ignore[arg-type]
    return tiny


def cache_dir() -> Path:
    base = Path(os.environ.get("LORAPLANE_CACHE") or Path.home() / ".cache" / "loraplane")
    return base / "models" / f"{NAME}-{VERSION}"


def ensure_tiny_model(root: Path | None = None) -> TinyModel:
    """The cached tiny model, built on first use; safe when several processes ask at once."""
    target = root or cache_dir()
    if TinyModel(target).is_complete():
        return TinyModel(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from servers running as another user
    try:
        build(staging)
        try:
            staging.rename(target)  # atomic; replaces an empty folder (a fresh --out DIR)
        except OSError:
            if not TinyModel(target).is_complete():  # else another builder won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TinyModel(target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraplane_devcluster.tinymodel", description=__doc__)
    parser.add_argument(
        "--out", type=Path, help="build into this folder (default: the cache); reused when complete"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tiny = ensure_tiny_model(args.out.resolve() if args.out else None)
    print(json.dumps(tiny.describe(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
