"""``ThinkConfig``: what a think-while-reading session does (validated, frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field

from thinkstream.thinking.layouts import Layout
from thinkstream.thinking.units import UnitPolicy

DEPTHS = ("D1", "D2", "D3")


@dataclass(frozen=True)
class ThinkConfig:
    """Steering templates are ChatML by default (the default model's format): the input is
    an open user turn, a note closes it, answers as the assistant, and reopens it::

        ... user text of unit k | <|im_end|>\\n<|im_start|>assistant\\nNote: ...note...
        <|im_end|>\\n<|im_start|>user\\n | user text of unit k+1 ...

    ``passes`` (after the input closes; D2: integrate, D3: integrate then reflect) are
    user requests answered by the assistant, after the last note's tail. ``answer_request``
    fills the user turn that the last tail opens, so the answer prompt reads::

        ... <|im_end|>\\n<|im_start|>user\\n | Now answer ... | <|im_end|>\\n<|im_start|>assistant\\n
          last note / pass tail (R)           answer_request (R)  chat template suffix (S)

    ("": none; the template's suffix then closes an empty user turn).
    """

    layout: Layout = field(default_factory=Layout)
    units: UnitPolicy = field(default_factory=UnitPolicy)
    depth: str = "D1"
    note_head: str = "<|im_end|>\n<|im_start|>assistant\nNote:"
    note_tail: str = "<|im_end|>\n<|im_start|>user\n"
    note_tokens: int = 24  # budget of one note
    integrate_head: str = ("Summarize the facts needed to answer.<|im_end|>\n"
                           "<|im_start|>assistant\n")
    reflect_head: str = ("Check the summary against the text and correct it.<|im_end|>\n"
                         "<|im_start|>assistant\n")
    pass_tail: str = "<|im_end|>\n<|im_start|>user\n"
    pass_tokens: int = 64  # budget of one integration / reflection pass
    answer_request: str = "Now answer the question in a few words."
    max_reasoning_tokens: int = 512  # budget forcing: then straight to the answer
    stop_at_newline: bool = True  # a note ends at its first line break
    # Batch thinking (a baseline): no note while reading; at close every unit is noted in
    # order (none merged), each where the layout puts it, then the passes, then the answer.
    defer_notes: bool = False
    # D2/D3: the unit the close completes gets no note of its own; the integration pass
    # that follows reads it with everything else (one reasoning step less before answering).
    fold_last_unit: bool = True
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        # a name for the default of its kind ("gap", "sentence"), as the HTTP form spells it
        # (a string was taken as is and failed at the first note with an AttributeError)
        for name, kind in (("layout", Layout), ("units", UnitPolicy)):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, kind(value))
            elif not isinstance(value, kind):
                raise ValueError(f"{name} must be a {kind.__name__} or its kind's name, "
                                 f"got {type(value).__name__}")
        if self.depth not in DEPTHS:
            raise ValueError(f"depth: {self.depth!r} is not one of {', '.join(DEPTHS)}")
        for name in ("note_tokens", "pass_tokens", "max_reasoning_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")

    @property
    def passes(self) -> tuple[str, ...]:
        return {"D1": (), "D2": (self.integrate_head,),
                "D3": (self.integrate_head, self.reflect_head)}[self.depth]
