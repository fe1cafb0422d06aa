"""Settings of parallel generation: the caps on thread trees and the parallel-paths setting
of a request (``LLM.generate(..., parallel=...)``, the chat route's ``parallel`` field).

Every bad value raises ``ParamError`` naming the field (``parallel.paths``, ...), which the
server turns into a 400."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from thinkstream.sampling_params import ParamError, SamplingParams

MERGES = ("summary", "vote", "none")
LAYOUTS = ("parallel", "sequential")
JOIN_INTO = ("parent", "new")  # what a join continues: the thread, or a new summary thread


@dataclass(frozen=True)
class ThreadLimits:
    """How wide (children of one fork) and deep (forks nested) a thread tree may grow."""

    max_width: int = 16
    max_depth: int = 4

    def __post_init__(self) -> None:
        if self.max_width < 1 or self.max_depth < 1:
            raise ValueError("max_width and max_depth must be >= 1")

    def check(self, width: int, depth: int) -> None:
        """Raise ``ParamError`` for a fork of ``width`` children at nesting ``depth``."""
        if not 1 <= width <= self.max_width:
            raise ParamError("width", f"a fork makes 1 to {self.max_width} threads, got {width}")
        if depth > self.max_depth:
            raise ParamError("depth", f"forks nest at most {self.max_depth} deep, got {depth}")


@dataclass(frozen=True)
class ParallelConfig:
    """N reasoning paths from one prompt, then a merge (ParaThinker; self-consistency).

    ``paths`` paths of at most ``path_tokens`` tokens each, with seeds ``seed + i`` (the
    request's seed, else a random one) and, where given, ``path_prompts[i % len]`` as the
    path's first tokens. ``merge``: ``summary`` (a summary continues the request after
    ``summary_prompt``, reading every path through views: the answer is the request's text),
    ``vote`` (the majority of the paths' extracted final answers) or ``none`` (the paths
    only). ``layout``: where the summary sees the paths (``parallel``: all at the fork
    position, as ParaThinker; ``sequential``: one after another). ``temperature``: the
    paths' (None: the request's)."""

    paths: int = 4
    path_tokens: int = 256
    path_prompts: tuple[str, ...] = ()
    merge: str = "summary"
    layout: str = "parallel"
    summary_prompt: str = "\nFinal answer:"
    temperature: float | None = None
    max_paths: int = 16  # the server's cap (``paths`` out of 1..max_paths is a 400)

    def __post_init__(self) -> None:
        for name in ("paths", "path_tokens"):  # JSON "2" or 2.5 or true: a type error, named
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ParamError(f"parallel.{name}", f"must be an integer, got {value!r}")
        if self.temperature is not None and (
                not isinstance(self.temperature, int | float) or isinstance(self.temperature, bool)):
            raise ParamError("parallel.temperature", f"must be a number, got {self.temperature!r}")
        for name in ("merge", "layout", "summary_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ParamError(f"parallel.{name}", f"must be a string, got {getattr(self, name)!r}")
        if isinstance(self.path_prompts, str) or not isinstance(self.path_prompts, list | tuple):
            raise ParamError("parallel.path_prompts", "must be a list of strings")
        object.__setattr__(self, "path_prompts", tuple(self.path_prompts))
        if not 1 <= self.paths <= self.max_paths:
            raise ParamError("parallel.paths", f"must be in 1..{self.max_paths}, got {self.paths}")
        if not 1 <= self.path_tokens <= 32768:
            raise ParamError("parallel.path_tokens", f"must be in 1..32768, got {self.path_tokens}")
        if self.merge not in MERGES:
            raise ParamError("parallel.merge", f"must be one of {', '.join(MERGES)}, "
                             f"got {self.merge!r}")
        if self.layout not in LAYOUTS:
            raise ParamError("parallel.layout", f"must be one of {', '.join(LAYOUTS)}, "
                             f"got {self.layout!r}")
        if not all(isinstance(p, str) for p in self.path_prompts):
            raise ParamError("parallel.path_prompts", "must be a list of strings")
        if self.temperature is not None and not 0 <= self.temperature <= 10:
            raise ParamError("parallel.temperature", f"must be in [0, 10], got {self.temperature}")

    @classmethod
    def from_value(cls, value: ParallelConfig | Mapping | None,
                   max_paths: int = 16) -> ParallelConfig | None:
        """A config from a mapping (a request body's ``parallel`` object); unknown keys are
        a ``ParamError`` naming them."""
        if value is None or isinstance(value, ParallelConfig):
            return value
        if not isinstance(value, Mapping):
            raise ParamError("parallel", "must be an object")
        known = {f.name for f in fields(cls)} - {"max_paths"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ParamError(f"parallel.{unknown[0]}", "unknown field")
        try:
            return cls(**value, max_paths=max_paths)
        except TypeError as exc:
            raise ParamError("parallel", str(exc)) from None


def parallel_config(params: SamplingParams, value: ParallelConfig | Mapping | None,
                    max_paths: int = 16) -> ParallelConfig | None:
    """The parallel-paths setting of a request (None: off); ``ParamError`` naming the field.
    A constrained output (``structured_outputs``: a schema, a choice, a tool call) needs
    ``merge="summary"``: only the summary is sampled under the constraint; a vote's answer
    is text the unconstrained paths wrote, and ``none`` answers with nothing."""
    cfg = ParallelConfig.from_value(value, max_paths)
    if cfg is not None and params.n != 1:
        raise ParamError("n", "parallel paths need n == 1")
    if cfg is not None and cfg.merge != "summary" and params.structured_outputs is not None:
        raise ParamError("parallel.merge", f"{cfg.merge!r} cannot follow structured outputs "
                         "(response_format, structured_outputs, a required tool call): only "
                         "a summary is sampled under them; use merge 'summary'")
    return cfg


def reasoning_text(paths: list[str]) -> str:
    """The paths as one ``reasoning_content`` text: each headed by its number."""
    return "\n\n".join(f"Path {i + 1}:\n{t.strip()}" for i, t in enumerate(paths))
