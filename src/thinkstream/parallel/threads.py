"""Fork / join threads over one KV cache: a ``ThreadTree`` owns the threads of a request.

A thread is a sequence. ``fork`` pauses a thread T (its last token is held back, as an open
input's is) and starts children that read T's whole context through views (nothing is
copied: T's blocks are held once whatever the number of children) and continue from T's
held token, each with its own suffix (a path instruction, an outline item), sampling
parameters and seed. The children are attached sequences (``LLMEngine.attach``; this tree
is their ``SequenceOwner``): they decode concurrently in the continuous batch.

    T:        | context ........................ | t |           (t: held, uncomputed)
    child c:  view of T's context                | t | suffix_c | generated_c | x |

A child ends on its stop token, on a stop string of its params (the token completing it is
kept, its text cut) or after ``max_tokens`` tokens; it then stays resident, idle (its last
token ``x`` held back: the stop token, or a filler after a stop string or a full budget so
that every generated token is computed), because a join reads it. ``join`` continues T
after the chosen children, read through views at the layout's positions (``attention/
shift.py``), then an optional suffix:

    parallel    (ParaThinker): every child at T's fork position p; T continues at
                p + 1 + max L_c. The children never see each other; T sees all.
    sequential  child k at p + 1 + L_1 + ... + L_{k-1} (shifted views); T continues after
                the last. Each child's keys are still those it computed beside T's context
                alone (ThreadWeaver's trie: siblings never see each other), re-rotated.

T's own earlier tokens keep the view they were computed with (``kv_prefix_visible``), so
any thread recomputes exactly after a preemption, and the children live until the request
ends (the joined thread reads them). Forks nest (a child may fork and join); width and
depth are capped (``ThreadLimits``, a ``ParamError`` naming ``width`` / ``depth``).
"""

from __future__ import annotations

import dataclasses
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from thinkstream.engine.detokenize import IncrementalDetokenizer, StopStringMatcher
from thinkstream.engine.llm_engine import LLMEngine
from thinkstream.engine.request import Sequence as Seq
from thinkstream.parallel.config import JOIN_INTO, LAYOUTS, ThreadLimits
from thinkstream.sampling_params import ParamError, SamplingParams


@dataclass(eq=False)
class Thread:
    """One thread of a tree: its sequence, where its generated tokens start, its state."""

    seq: Seq
    depth: int = 0
    index: int = 0  # among its siblings
    gen_start: int = 0  # own token index of its first sampled token
    budget: int | None = None  # tokens it may sample (None: the root, its request's own)
    stop_ids: frozenset[int] = frozenset()
    min_tokens: int = 0
    done: bool = False
    summary: bool = False  # a new sequence a join started (``join(..., into="new")``)
    stops: StopStringMatcher | None = None  # its stop strings (None: none)
    detok: IncrementalDetokenizer | None = None  # its text, fed to ``stops``
    text: str = ""  # its text so far, cut at a stop string (with ``stops`` only)
    stop_str: str | None = None  # the stop string that ended it
    children: list[Thread] = field(default_factory=list)

    @property
    def token_ids(self) -> list[int]:
        """Its sampled tokens (a done thread's held-back last token left out)."""
        end = self.seq.num_tokens - 1 if self.done else self.seq.num_tokens
        return self.seq.token_ids[self.gen_start : end]

    @property
    def view_len(self) -> int:
        """Tokens a join reads: its suffix and sampled tokens (not the fork token)."""
        return self.seq.num_tokens - 2


Listener = Callable[[Thread, int | None], None]  # (thread, token or None when it ends)


class ThreadTree:
    """The threads of one request; the ``SequenceOwner`` of its children."""

    def __init__(self, engine: LLMEngine, request_id: str, limits: ThreadLimits | None = None,
                 listener: Listener | None = None) -> None:
        self.engine, self.rid = engine, request_id
        self.limits = limits or ThreadLimits()
        self.root = Thread(engine.requests[request_id].seqs[0])
        self.listener = listener
        self._threads: dict[str, Thread] = {}
        self._count = self._forks = 0
        self._eos = engine.eos_ids

    # ------------------------------------------------------------------ fork
    def fork(self, thread: Thread, suffixes: Sequence[Sequence[int]],
             params: Sequence[SamplingParams], max_tokens: int) -> list[Thread]:
        """Pause ``thread`` and start one child per suffix (``params[i]``: its sampling,
        seeded ``params[i].seed``). Raises ``ParamError`` over the caps or on a thread that
        is finished."""
        self.limits.check(len(suffixes), thread.depth + 1)
        if len(params) != len(suffixes):
            raise ParamError("params", "one SamplingParams per child")
        if thread.seq.status.finished or thread.done:
            raise ParamError("thread", "cannot fork a finished thread")
        if max_tokens < 1:
            raise ParamError("max_tokens", f"must be >= 1, got {max_tokens}")
        for suffix, p in zip(suffixes, params, strict=True):
            self._check(suffix, p)
        self.check_room([1 + len(s) + max_tokens for s in suffixes], "width", "max_tokens")
        t = thread.seq
        t.input_closed = False  # pause: its last token is held, every child continues it
        fork_tok, fork_pos = t.token_ids[-1], t.position(t.num_tokens - 1)
        prefix = [*t.kv_prefix, (t.seq_id, t.num_tokens - 1)]
        kids = []
        self._forks += 1  # the children of one fork are admitted together or not at all
        for i, (suffix, p) in enumerate(zip(suffixes, params, strict=True)):
            kids.append(self._new_thread([fork_tok, *suffix], p, max_tokens, list(prefix),
                                         fork_pos, thread.depth + 1,
                                         f"{self.rid}#f{self._forks}", i))
        thread.children += kids
        for kid in kids:
            self.engine.attach(self.rid, kid.seq, self)
        return kids

    # ------------------------------------------------------------------ join
    def join(self, thread: Thread, children: Sequence[Thread], suffix: Sequence[int] = (),
             layout: str = "parallel", max_tokens: int | None = None, into: str = "parent",
             params: SamplingParams | None = None) -> Thread | None:
        """Continue after ``children`` (``thread``'s own, all done) and ``suffix``, read
        through views at ``layout``'s positions (module docstring). ``into="parent"``:
        ``thread`` continues (a child thread then samples ``max_tokens`` more, default what
        its budget left; the root: its request's ``max_tokens``); returns None.
        ``into="new"``: a new summary thread, returned, reads ``thread``'s context, the
        children and ``suffix`` (``thread`` stays paused: join or fork it again) and samples
        at most ``max_tokens`` (default ``params.max_tokens`` or 64) with ``params`` (default
        the request's); its blocks are freed when it ends. ``ParamError`` names ``layout``,
        ``into``, ``children`` or ``thread``."""
        if layout not in LAYOUTS:
            raise ParamError("layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if into not in JOIN_INTO:
            raise ParamError("into", f"must be one of {', '.join(JOIN_INTO)}, got {into!r}")
        if not children or any(c not in thread.children or not c.done for c in children):
            raise ParamError("children", "join reads finished children of the thread only")
        if thread.seq.status.finished:
            raise ParamError("thread", "cannot join into a finished thread")
        self._check(suffix, params)
        t = thread.seq
        n = t.num_tokens  # own tokens up to and with the held fork token
        fork_pos = t.position(n - 1)
        views, shift = [], 0
        for c in children:
            views.append((c.seq.seq_id, c.seq.num_tokens - 1, 1, shift))
            if layout == "sequential":
                shift += c.view_len
        span = shift if layout == "sequential" else max(c.view_len for c in children)
        if into == "new":
            return self._summary(thread, views, span, suffix, max_tokens, params)
        t.kv_prefix_visible = [t.visible_prefix(i) for i in range(n)]  # the past keeps its view
        t.positions = [t.position(i) for i in range(n)]
        t.kv_prefix.extend(views)
        t.position_offset = fork_pos + 1 + span - n  # own token i >= n sits at offset + i
        if thread is self.root and t.num_tokens == t.num_prompt_tokens:
            state = self.engine.requests[self.rid]
            prompt = state.prompt_token_ids
            if suffix:
                self.engine.extend_input(self.rid, suffix)
            self.engine.close_input(self.rid)
            state.prompt_token_ids = prompt  # the suffix is the tree's, not the request's
        else:
            t.token_ids.extend(suffix)
            t.input_closed = True
            thread.done = False
            if max_tokens is not None and thread.budget is not None:
                thread.budget = t.num_tokens - thread.gen_start + max_tokens
        self.engine.wake(t)
        return None

    def _summary(self, thread: Thread, views: list[tuple], span: int, suffix: Sequence[int],
                 max_tokens: int | None, params: SamplingParams | None) -> Thread:
        """A new sequence after ``thread``'s held fork token, the children's ``views``
        (``span`` positions) and ``suffix``: the context ``join(into="parent")`` gives.

            summary:  view of T's context | t | views of the children | suffix | generated |
        """
        t = thread.seq
        p = params or self.root.seq.params
        budget = max_tokens if max_tokens is not None else (p.max_tokens or 64)
        if budget < 1:
            raise ParamError("max_tokens", f"must be >= 1, got {budget}")
        self.check_room([1 + len(suffix) + budget], "into", "max_tokens")
        fork_pos = t.position(t.num_tokens - 1)
        before = [*t.kv_prefix, (t.seq_id, t.num_tokens - 1)]  # what the fork token sees
        own = [t.token_ids[-1], *suffix]
        kid = self._new_thread(own, p, budget, [*before, *views], fork_pos + span,
                               thread.depth + 1, group=None)
        kid.seq.positions = [fork_pos]  # own token i >= 1 sits at fork_pos + span + i
        kid.seq.kv_prefix_visible = [sum(e[1] - (e[2] if len(e) > 2 else 0) for e in before)]
        kid.summary = True
        self.engine.attach(self.rid, kid.seq, self)
        return kid

    def check_room(self, new: Sequence[int], seats_param: str, blocks_param: str) -> None:
        """Refuse threads that could never all run (``check_room``): the root as it is now,
        the live threads at their budgets and ``new`` (the tokens each new thread may hold)."""
        live = [t for t in self._threads.values() if not t.seq.status.finished]
        held = [self.root.seq.num_tokens, *(t.gen_start + (t.budget or 0) for t in live), *new]
        check_room(self.engine, held, seats_param, blocks_param)

    def _check(self, suffix: Sequence[int], params: SamplingParams | None) -> None:
        """What the engine checks of a request, for a child's or a join's own tokens and
        params: token ids in the vocabulary, params the model can serve (else the step that
        computes them would fail, and every request in its batch with it)."""
        vocab = self.engine.model_config.vocab_size
        bad = [t for t in suffix if not (hasattr(t, "__index__") and 0 <= operator.index(t) < vocab)]
        if bad:
            raise ParamError("suffix", f"token id {bad[0]!r} is not in the vocabulary (0..{vocab - 1})")
        if params is not None:
            self.engine.check_params(params)

    def _new_thread(self, own: list[int], p: SamplingParams, budget: int, prefix: list[tuple],
                    offset: int, depth: int, group: str | None, index: int = 0) -> Thread:
        """A thread whose sequence is ``own`` after the views ``prefix``, own token i at
        ``offset + i``, sampling ``budget`` tokens with ``p`` (seeded ``p.seed``)."""
        self._count += 1
        seed = p.seed if p.seed is not None else random.getrandbits(63)
        seq = Seq(seq_id=f"{self.rid}#t{self._count}", request_id=self.rid, index=-1,
                  token_ids=own, num_prompt_tokens=len(own),
                  params=dataclasses.replace(p, n=1, ignore_eos=True, stop_token_ids=(),
                                             stop=(), max_tokens=None),
                  generator=torch.Generator(device=self.engine.device).manual_seed(seed),
                  max_tokens=budget + 2, position_offset=offset, kv_prefix=prefix,
                  admit_group=group)
        stops = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else self._eos)
        kid = Thread(seq, depth, index, len(own), budget, stops, p.min_tokens)
        if p.stop:
            kid.stops = StopStringMatcher(p.stop, p.include_stop_str_in_output)
            kid.detok = IncrementalDetokenizer(self.engine.tokenizer, own, p.skip_special_tokens)
        self._threads[seq.seq_id] = kid
        return kid

    # --------------------------------------------------------- owner of children
    def on_token(self, seq: Seq, token_id: int) -> str | None:
        """A child sampled ``token_id``: a stop token ends it (held back, not read by a
        join); the budget's last token ends it after being counted (a filler is held)."""
        kid = self._threads.get(seq.seq_id)
        if kid is None or kid.done:
            return None
        count = seq.num_tokens - kid.gen_start
        if token_id in kid.stop_ids and count > kid.min_tokens:
            self.end(kid)
            return self.rid
        if self.listener is not None:
            self.listener(kid, token_id)
        if count >= (kid.budget or 0) or self._stopped_by_string(kid, token_id, count):
            seq.token_ids.append(token_id)  # the filler: every counted token gets computed
            self.end(kid)
        return self.rid

    @staticmethod
    def _stopped_by_string(kid: Thread, token_id: int, count: int) -> bool:
        """Feed ``token_id``'s text to the thread's stop strings (as ``engine/output.py``
        does for a request; none ends the first ``min_tokens`` tokens): True when one
        completes. The token stays the thread's (a join reads it); its text is cut."""
        if kid.stops is None or kid.detok is None:
            return False
        emit, stopped = kid.stops.feed(kid.detok.push(token_id), armed=count > kid.min_tokens)
        kid.text += emit
        if stopped:
            kid.stop_str = kid.stops.matched
        return stopped

    def on_starved(self, seq: Seq) -> None:
        kid = self._threads.get(seq.seq_id)
        if kid is not None and not kid.done:
            self.end(kid)

    def end(self, kid: Thread) -> None:
        """The child samples no more; it stays resident, idle, for a join to read (a
        summary that no thread reads is freed now)."""
        kid.done = True
        kid.seq.input_closed = False
        if kid.summary and not kid.children:
            self.engine.finish_sequence(kid.seq)
        if self.listener is not None:
            self.listener(kid, None)

    def thread(self, seq_id: str) -> Thread | None:
        return self._threads.get(seq_id)


def check_room(engine: LLMEngine, held: Sequence[int], seats_param: str,
               blocks_param: str) -> None:
    """Refuse a thread tree that could never run: a request's threads stay resident until it
    ends (a join reads them), so all of them, each holding ``held[i]`` tokens (the root
    first), must fit the engine's sequence slots (``max_num_seqs``) and KV pool at once;
    else the children of a fork wait forever for room that only their own tree holds.
    ``ParamError`` naming ``seats_param`` (slots) or ``blocks_param`` (blocks)."""
    most = engine.config.max_num_seqs
    if len(held) > most:
        raise ParamError(seats_param, f"too many: {len(held)} sequences of this request at "
                         f"once (its threads and root) but the engine runs at most {most} "
                         "(max_num_seqs)")
    blocks = sum(engine.blocks_for(n) for n in held)
    if blocks > engine.num_kv_blocks:
        raise ParamError(blocks_param, f"too large: the request's threads at their token budgets need "
                         f"{blocks} KV blocks at once but the cache has {engine.num_kv_blocks}")
