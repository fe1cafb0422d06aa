"""Task sets of ``thinkstream bench think-while-reading``: seeded generators with exact answers.

Each task is a passage streamed one sentence at a time and a question (before the passage,
or after it). Three sets, each of 6-12 sentences:

- ``context_qa``: three people's facts of one kind (house number, age, books) scattered
  among filler sentences; the question asks one value, or whose value it is.
- ``state_tracking``: a quantity changing ("Tom has 3 apples. Tom buys 4 more apples. ...");
  the question asks the final count.
- ``ordering``: height comparisons that fix a total order (every adjacent pair, in random
  order and direction, plus some implied ones); the question asks the tallest or shortest.

``Task.data`` keeps the structured form the sentences were written from, so the answer can
be checked independently. ``score`` reads the answer from free model output: the first
number (digits or a number word up to twenty) or the first of the task's names to appear.
Pure Python; ``rng`` is a ``random.Random``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SETS = ("context_qa", "state_tracking", "ordering")
NAMES = ("Tom", "Ann", "Ben", "Mia", "Sam", "Eva", "Leo", "Zoe", "Max", "Ivy", "Dan", "Amy",
         "Joe", "Kim", "Ray", "Sue")
FILLERS = (
    "The sky was grey that morning.", "A bus stopped near the park.",
    "The shop on the corner sells fresh bread.", "Birds sang in the tall trees.",
    "The library opens at noon.", "A cold wind came from the north.",
    "The river was quiet and wide.", "Someone played a song on the radio.",
    "The old bridge was painted green.", "Rain was expected later in the day.",
    "The market was busy and loud.", "A cat slept on a warm wall.",
)
# (fact, question for the value, question for the name, values)
FACTS = (
    ("{n} lives in house number {v}.", "What is the house number of {n}?",
     "Who lives in house number {v}?", range(10, 100)),
    ("{n} is {v} years old.", "How old is {n}?", "Who is {v} years old?", range(18, 80)),
    ("{n} has {v} books.", "How many books does {n} have?", "Who has {v} books?", range(2, 60)),
)
ITEMS = ("apples", "coins", "marbles", "stickers", "pencils", "cards")
ADD = ("{n} buys {k} more {item}.", "{n} finds {k} more {item}.", "{o} gives {n} {k} {item}.")
SUB = ("{n} gives {k} {item} to {o}.", "{n} loses {k} {item}.", "{n} sells {k} {item}.")
WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()
_NUMBER = re.compile(r"\d+|\b(?:" + "|".join(WORDS) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class Task:
    kind: str  # one of SETS
    sentences: tuple[str, ...]
    question: str
    answer: str  # digits, or one of ``names``
    question_first: bool = False  # the question is streamed before the passage
    names: tuple[str, ...] = ()  # the names a name answer is chosen from
    data: tuple = ()  # the structured form (see each generator)

    @property
    def chunks(self) -> tuple[str, ...]:
        """What arrives, in order: the passage's sentences and the question."""
        if self.question_first:
            return (self.question, *self.sentences)
        return (*self.sentences, self.question)


def context_qa(rng: random.Random, n: int) -> list[Task]:
    """``data``: ((name, value), ...) of the facts, in passage order."""
    tasks = []
    for _ in range(n):
        fact, ask_value, ask_name, values = rng.choice(FACTS)
        people = rng.sample(NAMES, 3)
        vals = rng.sample(values, 3)
        fillers = rng.sample(FILLERS, rng.randint(3, 7))
        slots = sorted(rng.sample(range(len(fillers) + 3), 3))
        sentences, facts = list(fillers), list(zip(people, vals, strict=True))
        for slot, (p, v) in zip(slots, facts, strict=True):
            sentences.insert(slot, fact.format(n=p, v=v))
        i = rng.randrange(3)
        if rng.random() < 0.5:
            question, answer = ask_value.format(n=people[i]), str(vals[i])
        else:
            question, answer = ask_name.format(v=vals[i]), people[i]
        tasks.append(Task("context_qa", tuple(sentences), question, answer,
                          question_first=rng.random() < 0.5, names=tuple(people),
                          data=tuple(facts)))
    return tasks


def state_tracking(rng: random.Random, n: int) -> list[Task]:
    """``data``: (("start", v), ("add" | "sub", k), ...), one per sentence."""
    tasks = []
    for _ in range(n):
        name, other = rng.sample(NAMES, 2)
        item = rng.choice(ITEMS)
        count = rng.randint(2, 9)
        sentences, data = [f"{name} has {count} {item}."], [("start", count)]
        for _ in range(rng.randint(5, 8)):
            k = rng.randint(1, 5)
            op = "sub" if k <= count and rng.random() < 0.5 else "add"
            count += k if op == "add" else -k
            template = rng.choice(ADD if op == "add" else SUB)
            noun = item[:-1] if k == 1 else item  # "1 apple"
            sentences.append(template.format(n=name, o=other, k=k, item=noun))
            data.append((op, k))
        question = f"How many {item} does {name} have now?"
        tasks.append(Task("state_tracking", tuple(sentences), question, str(count),
                          names=(name, other), data=tuple(data)))
    return tasks


def ordering(rng: random.Random, n: int) -> list[Task]:
    """``data``: ((taller, shorter), ...) of the comparisons, in passage order."""
    tasks = []
    for _ in range(n):
        people = rng.sample(NAMES, rng.randint(4, 5))  # tallest first
        pairs = [(people[i], people[i + 1]) for i in range(len(people) - 1)]
        implied = [(people[i], people[j]) for i in range(len(people))
                   for j in range(i + 2, len(people))]
        pairs += rng.sample(implied, rng.randint(1, 2))
        rng.shuffle(pairs)
        sentences = [f"{a} is taller than {b}." if rng.random() < 0.5 else f"{b} is shorter than {a}."
                     for a, b in pairs]
        for filler in rng.sample(FILLERS, max(0, 6 - len(sentences)) + rng.randint(0, 1)):
            sentences.insert(rng.randrange(len(sentences) + 1), filler)
        tallest = rng.random() < 0.5
        question = f"Who is the {'tallest' if tallest else 'shortest'}?"
        tasks.append(Task("ordering", tuple(sentences), question,
                          people[0] if tallest else people[-1], names=tuple(sorted(people)),
                          data=tuple(pairs)))
    return tasks


GENERATORS = {"context_qa": context_qa, "state_tracking": state_tracking, "ordering": ordering}


def make_tasks(kind: str, seed: int, n: int) -> list[Task]:
    """``n`` tasks of one set; the same seed gives the same tasks."""
    if kind not in GENERATORS:
        raise ValueError(f"task set: {kind!r} is not one of {', '.join(SETS)}")
    return GENERATORS[kind](random.Random(f"{kind}:{seed}"), n)


def extract(task: Task, text: str) -> str | None:
    """The answer the text gives: its first number (digits or a word up to twenty) for a
    numeric task, else the first of the task's names it mentions (case-insensitive)."""
    if task.answer.isdigit():
        m = _NUMBER.search(text)
        if m is None:
            return None
        word = m.group(0).lower()
        return str(WORDS.index(word)) if word in WORDS else str(int(word))
    hits = [(m.start(), name) for name in task.names
            if (m := re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE))]
    return min(hits)[1] if hits else None


def score(task: Task, text: str) -> bool:
    return extract(task, text) == task.answer


__all__ = ["GENERATORS", "SETS", "Task", "context_qa", "extract", "make_tasks", "ordering",
           "score", "state_tracking"]
