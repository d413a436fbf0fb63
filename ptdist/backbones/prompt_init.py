"""How a soft prompt starts, as data (read without torch: a run's settings hold one).

An init is data (`PromptInit`): a mode (`InitMode`) and, for two of them, what it starts from:
  random          uniform in [-0.5, 0.5], as in Lester et al. (2021)
  vocab           embeddings of L vocabulary tokens sampled without replacement (specials excluded)
  text            embeddings of the tokens of ``text``, repeated to fill L (PEFT's TEXT init)
  prompt          an existing prompt artifact, ``prompt``: a store id or a .safetensors file
The command line and YAML write an init as one string (``random``, ``vocab``, ``text:SOME
WORDS``, ``prompt:ID_OR_PATH``), read by `parse_init`; ``str(init)`` writes it back, and that
string is what a prompt id hashes and a manifest records.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ptdist.errors import PtdistError

INIT_FORMS = "random, vocab, text:SOME WORDS, prompt:ID_OR_PATH"  # the written forms


class InitMode(enum.Enum):
    RANDOM = "random"
    VOCAB = "vocab"
    TEXT = "text"
    PROMPT = "prompt"


@dataclass(frozen=True)
class PromptInit:
    """How a run's prompt starts: ``mode``, with the words of a text init (``text``) or the
    store id or file of a prompt init (``prompt``); the other modes take neither."""

    mode: InitMode = InitMode.RANDOM
    text: str | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        for name, mode in (("text", InitMode.TEXT), ("prompt", InitMode.PROMPT)):
            given = getattr(self, name)
            if (self.mode is mode) != bool(given and given.strip()):
                raise PtdistError(f"a {self.mode.value} init "
                                  f"{'needs' if self.mode is mode else 'takes no'} {name} "
                                  f"(got {given!r}); the written forms: {INIT_FORMS}")

    def __str__(self) -> str:
        """The written form, as `parse_init` reads it (and as prompt ids have always hashed
        an init that is not a prompt)."""
        ref = self.text if self.mode is InitMode.TEXT else self.prompt
        return f"{self.mode.value}:{ref}" if ref else self.mode.value

    @property
    def draws(self) -> bool:
        """Whether the init is drawn at random (and so depends on `init_generator`)."""
        return self.mode in (InitMode.RANDOM, InitMode.VOCAB)


def parse_init(written: str) -> PromptInit:
    """The init a command line or YAML file writes as one string (`INIT_FORMS`); the text or
    prompt after the colon is stripped of surrounding spaces."""
    mode, colon, ref = written.partition(":")
    if colon and mode in ("text", "prompt") and ref.strip():
        return PromptInit(InitMode(mode), **{mode: ref.strip()})
    if not colon and mode in ("random", "vocab"):
        return PromptInit(InitMode(mode))
    raise PtdistError(f"unknown prompt init {written!r}; use one of: {INIT_FORMS}")
