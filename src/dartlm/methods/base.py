"""What every method says: its special token, how an example is laid out, its loss, and how it decodes."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from dartlm.config import MethodConfig
from dartlm.data.example import Example
from dartlm.data.layout import PromptFormat, pad_pathways, segment_example
from dartlm.model.export import PromptSpec
from dartlm.thinking import AnswerThinking


class Method:
    """A training/inference recipe over the shared data -> train -> export -> evaluate pipeline.

    Subclasses set the class attributes and implement `layout` and `loss`.
    """

    name: str = ""
    # What the exported model's card says the model is: a title and one paragraph.
    title: str = ""
    description: str = ""
    thought_token: str | None = None  # special token added to the vocabulary (<st>, <pause>)
    uses_rem: bool = False
    # How the exported model thinks at inference: the name of a registered `dartlm.thinking.Thinking` ("answer":
    # the prompt ends with the separator and the model writes the answer; "cot": the model writes the CoT, the
    # separator, then the answer; "latent", "quiet"). It owns the prompt, the decoding and the card's snippet.
    decode: str = AnswerThinking.name

    # The method's own settings: a `dartlm.config.MethodSettings` dataclass whose fields a config file sets under
    # `method:` beside the common ones (None: the method has none). The values: `self.settings`.
    settings_class: type | None = None

    # A curriculum (iCoT, Coconut) changes the layout as training advances; the trainer tells the method where it
    # is (`set_progress`) and resets the optimizer whenever `schedule_key` changes.
    curriculum: bool = False

    def __init__(self, config: MethodConfig):
        self.config = config
        wanted = type(self).settings_class
        if wanted is not None and not isinstance(config.settings, wanted):
            raise TypeError(f"method {self.name}: config.settings is {type(config.settings).__name__}, expected "
                            f"{wanted.__name__} (build MethodConfig with name={self.name!r})")
        self.format = PromptFormat(separator=config.separator)
        self.epoch = 0.0  # training progress in epochs (curriculum methods)
        self.step = 0
        self.total_steps = 0  # of the whole run (0: unknown, outside training)

    @property
    def settings(self):
        """This method's own settings (an instance of `settings_class`), as the config gave them."""
        return self.config.settings

    def card_lines(self, config) -> list[str]:
        """What the model card says about this method's settings, beyond C and the separator (`config`: the whole
        run config)."""
        return []

    @property
    def num_thoughts(self) -> int:
        return self.config.num_thought_tokens if self.thought_token else 0

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Tokens added to the vocabulary for this method."""
        return (self.thought_token,) if self.thought_token else ()

    def extend_model(self, model: nn.Module, tokenizer=None) -> None:
        """Add modules of the method's own (CODI's projection, Quiet-STaR's head) to the prepared model; most methods
        add none."""

    def set_progress(self, epoch: float, step: int, total_steps: int = 0) -> None:
        self.epoch, self.step, self.total_steps = epoch, step, total_steps

    @property
    def progress(self) -> float:
        """The fraction of the training steps done (1.0 outside training, where schedules are at their end)."""
        return self.step / self.total_steps if self.total_steps else 1.0

    def student_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Trainable weights that only the student pathway uses (where `distill_grad: student` routes L_distill)."""
        return []

    def schedule_key(self, epoch: float, step: int | None = None):
        """The curriculum's stage at `epoch` (optimizer step `step`) (None: no curriculum)."""
        return None

    def encode(self, example: Example, tokenizer, thought_id: int | None) -> Any:
        """The training features of one example."""
        return self.layout(segment_example(example, tokenizer, self.format), thought_id)

    def layout(self, segments, thought_id: int | None) -> Any:
        raise NotImplementedError

    def length(self, features: Any) -> int:
        """The longest sequence of one example's features (checked against data.max_length)."""
        return len(features)

    def collate(self, features: Sequence[Any], pad_token_id: int) -> dict[str, Any]:
        return pad_pathways(features, pad_token_id)

    def loss(self, model: nn.Module, batch: dict[str, Any], backward=None) -> tuple[torch.Tensor, dict[str, float]]:
        """(total loss, extra scalar terms to log).

        backward, during training, back-propagates a part of the loss early (scaled as the Trainer scales the
        total); a method may use it to free activations sooner. Whatever it back-propagates must not stay in the
        graph of the returned total.
        """
        raise NotImplementedError

    def prompt_spec(self) -> PromptSpec:
        return PromptSpec(
            method=self.name,
            num_thought_tokens=self.num_thoughts,
            thought_token=self.thought_token,
            separator=self.config.separator,
            joiner=self.format.joiner,
            decode=self.decode,
        )


def thoughts(thought_id: int | None, count: int) -> list[int]:
    if count and thought_id is None:
        raise ValueError("thought tokens requested but the thought token has no id")
    return [thought_id] * count if count else []



def forward(model: nn.Module, batch: dict[str, torch.Tensor], **kwargs):
    """Run the model on one padded pathway batch."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
