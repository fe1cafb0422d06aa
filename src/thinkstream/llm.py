"""The offline Python API, shaped like vLLM's: ``LLM(...).generate / chat / stream``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jinja2

from thinkstream.config import EngineConfig
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.engine.request import RequestOutput
from thinkstream.loading.tokenizer import Tokenizer
from thinkstream.parallel.api import Threads
from thinkstream.parallel.config import ParallelConfig, ThreadLimits, parallel_config
from thinkstream.parallel.paths import start_paths
from thinkstream.sampling_params import ParamError, SamplingParams
from thinkstream.streaming.sessions import SessionInfo, SessionManager, UpdateResult
from thinkstream.thinking.config import ThinkConfig

Prompt = str | Sequence[int]
Message = dict[str, str]


def _as_prompt(prompt: Prompt | Mapping) -> Prompt:
    """A prompt, or vLLM's ``{"prompt": text}`` / ``{"prompt_token_ids": [...]}`` as one (a
    dict was read as a list of its keys: the prompt became the text "prompt")."""
    if not isinstance(prompt, Mapping):
        return prompt
    fields = set(prompt)
    if fields == {"prompt"}:
        return prompt["prompt"]
    if fields == {"prompt_token_ids"}:
        return list(prompt["prompt_token_ids"])
    raise ParamError("prompt", "a dict prompt takes exactly one of 'prompt' (text) or "
                     f"'prompt_token_ids' (this model takes text only); got {sorted(fields)}")


def _as_prompt_list(prompts: Prompt | Mapping | Sequence[Prompt | Mapping]) -> list[Prompt]:
    if isinstance(prompts, str | bytes | bytearray | Mapping) or not isinstance(prompts, Iterable):
        return [_as_prompt(prompts)]  # bytes, None, a number: the engine's error
    items = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [items]  # one prompt given as token ids
    return [_as_prompt(p) for p in items]


def _params_list(params: SamplingParams | Sequence[SamplingParams] | None,
                 n: int) -> list[SamplingParams]:
    """One ``SamplingParams`` per prompt: one for all, or a list as long as the prompts (as
    vLLM's ``generate`` takes them)."""
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * n
    plist = list(params)
    if len(plist) != n or not all(isinstance(p, SamplingParams) for p in plist):
        raise ParamError("sampling_params", f"must be one SamplingParams or a list of {n} "
                         f"(one per prompt), got {len(plist)} items")
    return plist


class LLM:
    """A model loaded for offline generation.

    >>> llm = LLM()  # the default model, SmolLM2-135M-Instruct
    >>> llm.chat([{"role": "user", "content": "Capital of France?"}])[0].outputs[0].text
    """

    def __init__(
        self, model: str | os.PathLike | None = None, *, dtype: str = "auto",
        quantization: str | None = "auto", device: str = "cpu", max_num_seqs: int = 64,
        kv_cache_memory: int = 256 * 1024 * 1024, kv_cache_dtype: str = "auto", **engine_options,
    ) -> None:
        """``dtype`` / ``quantization`` ``"auto"``: the fastest exact-enough setting for this
        hardware and checkpoint (``models/precision.py``; ``llm.engine.precision`` says what
        was chosen). Pin ``dtype="float32", quantization=None`` for plain float32.
        ``kv_cache_dtype``: "auto" (the model's dtype), "float32" or "bfloat16" (half the
        cache's bytes, keys and values rounded; ``EngineConfig.kv_cache_dtype``)."""
        checkpoint = engine_options.pop("checkpoint", None)  # an already loaded model
        config = EngineConfig(dtype=dtype, quantization=quantization, device=device,
                              max_num_seqs=max_num_seqs, kv_cache_dtype=kv_cache_dtype,
                              kv_cache_memory=kv_cache_memory, **engine_options)
        self.engine = LLMEngine(model, config, checkpoint=checkpoint)
        self.tokenizer = self.engine.tokenizer
        self._sessions: SessionManager | None = None

    def get_tokenizer(self) -> Tokenizer:
        """The model's tokenizer (vLLM's name; also ``llm.tokenizer``)."""
        return self.tokenizer

    def generate(
        self, prompts: Prompt | Mapping | Sequence[Prompt | Mapping],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *, use_tqdm: bool = False, parallel: ParallelConfig | dict | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text, token ids, or vLLM's ``{"prompt": ...}`` /
        ``{"prompt_token_ids": [...]}``) with one ``SamplingParams`` for all or one per
        prompt; outputs in the order of the prompts.
        ``parallel`` (``ParallelConfig`` or its fields as a dict): N reasoning paths per
        prompt, then a summary / vote (``outputs[0].paths``; ``parallel.paths``)."""
        items = _as_prompt_list(prompts)
        plist = _params_list(sampling_params, len(items))
        return self._run(self._start(items, plist, parallel), use_tqdm)

    def _start(self, items: list[Prompt], plist: list[SamplingParams],
               parallel: ParallelConfig | dict | None) -> list[str]:
        """Validate every request first, then queue them (and fork their paths); the ids."""
        cfgs = [parallel_config(params, parallel) for params in plist]
        states = [self.engine.make_request(None, p, params, input_closed=cfg is None)
                  for p, params, cfg in zip(items, plist, cfgs, strict=True)]  # validate all first
        if any(c is not None for c in cfgs) and any(not s.prompt_token_ids for s in states):
            raise ParamError("prompt", "must not be empty")
        ids = []
        try:
            for s, cfg in zip(states, cfgs, strict=True):
                ids.append(self.engine.add(s))
                if cfg is not None:
                    start_paths(self.engine, s, cfg)  # may refuse paths that never fit
        except BaseException:
            for rid in ids:
                self.engine.abort(rid)
            raise
        return ids

    def chat(
        self, messages: Sequence[Message] | Sequence[Sequence[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
        use_tqdm: bool = False, parallel: ParallelConfig | dict | None = None,
        chat_template: str | None = None, chat_template_kwargs: Mapping | None = None,
        add_generation_prompt: bool = True, continue_final_message: bool = False,
        tools: Sequence[dict] | None = None, **template_kwargs,
    ) -> list[RequestOutput]:
        """Apply the chat template to one conversation or a list of them, then generate.
        As vLLM's ``chat``: ``chat_template`` renders in place of the model's,
        ``chat_template_kwargs`` (and any other keyword) reach the template, ``tools`` are
        its ``tools`` variable, ``add_generation_prompt=False, continue_final_message=True``
        continues the last message (see ``chat_prompt``)."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        extra = dict(template_kwargs)  # unset, chat_template_kwargs may set it (as vLLM merges)
        if continue_final_message:
            extra["continue_final_message"] = True
        if tools is not None:
            extra["tools"] = list(tools)
        prompts = [self.chat_prompt(c, add_generation_prompt, chat_template=chat_template,
                                    chat_template_kwargs=chat_template_kwargs, **extra)
                   for c in convs]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, parallel=parallel)

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True, *,
                    chat_template: str | None = None, chat_template_kwargs: Mapping | None = None,
                    **template_kwargs) -> list[int]:
        """The prompt ids of a conversation (special-token text in messages is plain text
        unless ``allow_special_tokens_in_content``). As vLLM's ``chat``: assistant prefill is
        ``add_generation_prompt=False, continue_final_message=True`` (the model continues the
        last message); ``chat_template`` (jinja source) renders in place of the model's;
        ``chat_template_kwargs`` and other keywords reach the template
        (``enable_thinking=False``). A template that does not compile is a ``ParamError``
        naming ``chat_template``, one that rejects the messages one naming ``messages``."""
        kwargs = dict(chat_template_kwargs or {})
        if clash := sorted(set(kwargs) & {"messages", "add_generation_prompt", "chat_template",
                                          *template_kwargs}):
            raise ParamError("chat_template_kwargs", f"{clash[0]!r} is also given as an argument")
        try:
            return self.tokenizer.encode_chat(
                list(messages), add_generation_prompt, chat_template=chat_template,
                allow_special_tokens_in_content=self.engine.config.allow_special_tokens_in_content,
                **kwargs, **template_kwargs)
        except jinja2.TemplateSyntaxError as exc:
            raise ParamError("chat_template", f"does not compile (line {exc.lineno}: "
                             f"{exc.message})") from None
        except (jinja2.TemplateError, TypeError) as exc:  # raise_exception(), an undefined name
            raise ParamError("messages", f"the chat template rejected them "
                             f"({type(exc).__name__}: {exc})") from None

    def threads(self, prompt: Prompt, sampling_params: SamplingParams | None = None,
                limits: ThreadLimits | None = None) -> Threads:
        """A request whose threads fork and join from Python (``parallel.api.Threads``)."""
        return Threads(self, prompt, sampling_params, limits)

    def stream(
        self, prompt: Prompt | Mapping, sampling_params: SamplingParams | None = None, *,
        parallel: ParallelConfig | dict | None = None,
    ) -> Iterator[RequestOutput]:
        """Yield the request's output after every step; ``outputs[i].new_text`` is the delta
        (with ``parallel``, as ``generate`` takes it: ``outputs[0].new_paths`` are the paths'
        deltas, ``(path, text)``, then the answer's text follows). Closing the iterator early
        aborts the request; aborting the request (``engine.abort``) ends the iterator."""
        [rid] = self._start([_as_prompt(prompt)], _params_list(sampling_params, 1), parallel)
        return self._follow(rid)

    def _follow(self, rid: str) -> Iterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                outs = self.engine.step()
                for out in outs:
                    if out.request_id == rid:
                        finished = out.finished
                        yield out
                if not finished and rid not in self.engine.requests:
                    return  # aborted meanwhile (``Session.abort``, ``engine.abort``): it ends
                if not outs:
                    self._check_progress([rid])
        finally:
            if not finished:
                self.engine.abort(rid)

    # ---------------------------------------------------------- streaming input
    def open_session(
        self, prompt: Prompt | None = None, *, messages: Sequence[Message] | None = None,
        sampling_params: SamplingParams | None = None, session_id: str | None = None,
        thinking: ThinkConfig | None = None,
    ) -> Session:
        """Open a streaming-input session: its input is prefilled as it arrives.

        ``prompt`` is the text (or token ids) received so far; with ``messages`` the streamed
        text becomes a new user message after them (``prompt`` is its first part). See
        ``Session``.
        """
        if self._sessions is None:
            self._sessions = SessionManager(self.engine)
        info = self._sessions.open(session_id, prompt, messages, sampling_params,
                                   thinking=thinking)
        return Session(self, info.session_id)

    def _prefill(self, rid: str) -> None:
        """Step until the request has nothing left to compute (or is parked / finished)."""
        state = self.engine.requests.get(rid)
        if state is None:
            return
        seq = state.seqs[0]
        while seq.num_pending_tokens and not self.engine.is_parked(seq) and not seq.status.finished:
            self.engine.step()
            if not self.engine.last_step_progress:
                return  # waits for memory or for the close (a thinking layout): not here

    def _check_progress(self, ids) -> None:
        """After a step with no output: raise if it changed nothing either (nothing else
        runs the engine here, so stepping again would spin forever)."""
        if not self.engine.last_step_progress:
            raise RuntimeError(f"request(s) {sorted(ids)!r} cannot progress: unfinished, but the "
                               "scheduler can compute nothing")

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        pending = set(ids)
        done: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generating", unit="req", dynamic_ncols=True)
        generated = 0
        try:
            while pending:
                outs = self.engine.step()
                if not outs:
                    self._check_progress(pending)
                for out in outs:
                    generated += sum(len(o.new_token_ids) for o in out.outputs)
                    if out.finished and out.request_id in pending:
                        pending.discard(out.request_id)
                        done[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
                if bar is not None:
                    bar.set_postfix(gen_tokens=generated, refresh=False)
        except BaseException:
            for rid in pending:
                self.engine.abort(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [done[i] for i in ids]


class Session:
    """A streaming-input session of an ``LLM`` (see ``LLM.open_session``).

    >>> s = llm.open_session(messages=[], sampling_params=SamplingParams(temperature=0))
    >>> s.append("Summarize: the cat sat ")   # prefilled now, while more is coming
    >>> s.append("on the mat.")
    >>> answer = s.complete().outputs[0].text  # only the last token(s) left to compute

    ``append`` / ``replace`` step the engine until what was received is prefilled
    (``prefill=False`` leaves it to later steps); outputs of other requests produced by
    those steps are not kept, so don't interleave them with a live ``LLM.stream``.
    """

    def __init__(self, llm: LLM, session_id: str) -> None:
        self.llm = llm
        self.id = session_id

    @property
    def info(self) -> SessionInfo:
        return self.llm._sessions.info(self.id)  # type: ignore[union-attr]

    def append(self, data: str | bytes | Sequence[int], seq: int | None = None,
               prefill: bool = True) -> UpdateResult:
        """Add text (or bytes, or token ids for a token session) to the input."""
        result = self.llm._sessions.append(self.id, data, seq)  # type: ignore[union-attr]
        if prefill:
            self.llm._prefill(self.id)
        return result

    def replace(self, data: str | Sequence[int], seq: int | None = None,
                prefill: bool = True) -> UpdateResult:
        """Update mode: the whole input becomes ``data``; the KV of the common prefix stays."""
        result = self.llm._sessions.replace(self.id, data, seq)  # type: ignore[union-attr]
        if prefill:
            self.llm._prefill(self.id)
        return result

    @property
    def reasoning_content(self) -> str:
        """Think while reading: the reasoning so far (notes, passes)."""
        state = self.llm.engine.requests.get(self.id)
        return state.reasoning if state is not None else ""

    def think(self) -> Iterator[RequestOutput]:
        """Step the engine until the reasoning has caught up with the input received so
        far, yielding this session's outputs as notes arrive (``new_reasoning_content``)."""
        ctrl = self.llm._sessions.thinker(self.id)  # type: ignore[union-attr]
        state = self.llm.engine.requests.get(self.id)
        if ctrl is None or state is None:
            return
        while (ctrl.note is not None or ctrl.S.num_pending_tokens) and not state.finished:
            if not self.llm.engine.has_work():
                break
            for out in self.llm.engine.step():
                if out.request_id == self.id:
                    yield out
            if not self.llm.engine.last_step_progress:
                break

    def close(self, data: str | bytes | Sequence[int] | None = None) -> Iterator[RequestOutput]:
        """End the input (after ``data``, a last chunk, computed in the answer's first step)
        and stream the answer (closing the iterator early aborts it)."""
        self.llm._sessions.close(self.id, data=data)  # type: ignore[union-attr]
        return self.llm._follow(self.id)

    def complete(self, data: str | bytes | Sequence[int] | None = None) -> RequestOutput:
        """End the input (after ``data``, if given) and return the final output."""
        *_, last = self.close(data)
        return last

    def abort(self) -> bool:
        return self.llm._sessions.abort(self.id)  # type: ignore[union-attr]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.info.state == "open":
            self.abort()
