"""The chat prompts of ``thinkstream bench speculative`` (issue 13's workloads).

- **echo**: the issue's echo-heavy case as users meet it: edit a 20-30 line function and
  return the whole function (add a parameter, add type hints, fix a bug), copy three
  paragraphs with an edit (replace a word, correct the spelling). SmolLM2-135M-Instruct
  answers them greedily with 105-215 tokens, 55-92% of which prompt lookup predicts
  (the next token equals the one after the latest earlier match of the last tokens);
  prompts 150-350 tokens. ``max_tokens`` 384 (``ECHO_MAX_TOKENS``): no answer is cut off
  mid-copy (SmolLM2's longest is 215; an answer that loops is cut there).
- **echo-short**: the first echo set (until 2026-11-30 it was called "echo"): one
  paragraph of ~60 words to repeat, quote or copy with an edit, a 6-line function to
  rename a variable in; prompts ~105 tokens, answers 24-63 tokens (SmolLM2 drops or
  rewrites much of them).
- **echo-holdout**: eight more echo prompts of the same kinds (rename a function, add a
  method, f-strings, a JSDoc comment, an SQL condition, copy / correct / quote three
  paragraphs), written to judge drafting policies out of sample (``bench/speculative_sim.py
  --policies``: a policy tuned on echo must hold here too). SmolLM2 loops on two of them to
  ``max_tokens``.
- **chat**: four short open questions (little overlap with the prompt).
- **long**: two long-form writing prompts.

What SmolLM2 answers (greedy, thinkstream float32): ``python -m
thinkstream.bench.speculative_workloads`` prints every prompt's answer with its token
counts and the share prompt lookup predicts. This module imports no torch.
"""

from __future__ import annotations

import argparse

ECHO_MAX_TOKENS = 384

PASSAGE = ("The river rose slowly through the night. By morning the lower road was under "
           "water, the ferry had stopped running, and the school on the hill had opened its "
           "doors to families from the valley. Volunteers carried blankets, bread and dry "
           "clothes up the path while the mayor spoke with the engineers about the dam.")
STORY = PASSAGE + """

By noon the rain had eased, but the water kept rising. Farmers moved their cattle to the \
high pastures, and the baker kept his ovens going so that every family at the school had \
fresh bread. Children played in the gymnasium while their parents listened to the radio \
for news from upstream.

In the evening the engineers opened the spillway. The river fell by half a metre before \
midnight, and by the next morning the lower road could be seen again. The ferry ran its \
first crossing two days later, carrying a truck full of sandbags and a brass band that \
had come to thank the volunteers."""
MISSPELT = (STORY.replace("engineers", "enginers").replace("families", "familys")
            .replace("morning", "mornign"))
CODE = ("def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n"
        "        subtotal += item.price * item.quantity\n    tax = subtotal * tax_rate\n"
        "    return subtotal + tax\n")
ORDERS = '''def summarize_orders(orders, currency="EUR"):
    """Group orders by customer and return totals, counts and the largest order."""
    totals = {}
    counts = {}
    largest = {}
    skipped = 0
    for order in orders:
        if order.get("status") == "cancelled":
            skipped += 1
            continue
        customer = order["customer"].strip().lower()
        amount = order["amount"]
        if order.get("currency", currency) != currency:
            amount = convert(amount, order["currency"], currency)
        totals[customer] = totals.get(customer, 0) + amount
        counts[customer] = counts.get(customer, 0) + 1
        if amount > largest.get(customer, 0):
            largest[customer] = amount
    report = []
    for customer in sorted(totals):
        average = totals[customer] / counts[customer]
        report.append({
            "customer": customer,
            "total": round(totals[customer], 2),
            "orders": counts[customer],
            "average": round(average, 2),
            "largest": round(largest[customer], 2),
        })
    report.sort(key=lambda row: row["total"], reverse=True)
    return {"currency": currency, "customers": report, "skipped": skipped}
'''
CONFIG = '''def load_config(path):
    """Read a key = value file into a dict; lines starting with # are comments."""
    settings = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise ValueError(f"{path}:{number}: expected key = value")
            key, value = line.split("=", 1)
            key = key.strip()
            value = value.strip()
            if value.lower() in ("true", "yes", "on"):
                value = True
            elif value.lower() in ("false", "no", "off"):
                value = False
            elif value.isdigit():
                value = int(value)
            settings[key] = value
    return settings
'''
AVERAGE = '''def moving_average(values, window):
    """Return the averages of every run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    total = 0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index >= window:
            averages.append(total / window)
    return averages
'''

LIBRARY = """Anna opened the library at eight every morning, long before the first readers \
came in from the square. She watered the plants on the windowsill, switched on the old \
radiators and sorted the books that had been returned through the slot overnight. On \
Mondays there were always more of them, and some came back with sand between the pages.

At ten the schoolchildren arrived with their teacher. Anna read them a chapter from a book \
about a fox who wanted to see the sea, and afterwards each child chose a book to take \
home. The youngest could not yet read, so they picked books by their covers, which Anna \
thought was as good a reason as any.

In the afternoon the library was quiet. Students worked at the long tables by the \
windows, an old man read the newspapers from three countries, and Anna mended torn \
spines with tape and glue. When the bell of the church struck six, she closed the \
shutters, locked the door and walked home along the canal."""
TYPOS = (LIBRARY.replace("Anna", "Ines").replace("children", "childrn")
         .replace("library", "libary").replace("afternoon", "afternon"))
DURATION = '''def parse_duration(text):
    """Turn "1h30m", "45s" or "2d" into a number of seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    total = 0
    number = ""
    for char in text.strip().lower():
        if char.isdigit():
            number += char
        elif char in units:
            if not number:
                raise ValueError("missing number before " + char)
            total += int(number) * units[char]
            number = ""
        elif char == " ":
            continue
        else:
            raise ValueError("unknown unit: " + char)
    if number:
        raise ValueError("trailing number without unit")
    return total
'''
ACCOUNT = '''class Account:
    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance
        self.history = []

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("deposit must be positive")
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount):
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.balance -= amount
        self.history.append(("withdraw", amount))
'''
REPORT = '''def format_report(name, scores):
    lines = []
    lines.append("Report for %s" % name)
    lines.append("Number of scores: %d" % len(scores))
    best = max(scores)
    worst = min(scores)
    mean = sum(scores) / len(scores)
    lines.append("Best: %d, worst: %d" % (best, worst))
    lines.append("Mean: %.2f" % mean)
    for index, score in enumerate(scores):
        lines.append("  %d. %d" % (index + 1, score))
    return "\\n".join(lines)
'''
JS = '''function debounce(callback, delay) {
  let timer = null;
  return function (...args) {
    if (timer !== null) {
      clearTimeout(timer);
    }
    timer = setTimeout(() => {
      timer = null;
      callback.apply(this, args);
    }, delay);
  };
}
'''
SQL = '''SELECT users.id,
       users.name,
       users.email,
       COUNT(orders.id) AS order_count,
       SUM(orders.total) AS revenue
FROM users
LEFT JOIN orders ON orders.user_id = users.id
GROUP BY users.id, users.name, users.email
ORDER BY revenue DESC
LIMIT 20;
'''
WORKLOADS: dict[str, list[str]] = {
    "echo": [
        "Add a parameter `strict=False` to this function: when `strict` is true, unknown "
        "values raise a ValueError instead of being kept as strings. Return the complete "
        f"function.\n\n```python\n{CONFIG}```",
        "Add a docstring line and type hints to this function, and return the whole "
        f"function.\n\n```python\n{ORDERS}```",
        "This function has a bug: it skips the first average. Fix it and return the whole "
        f"corrected function.\n\n```python\n{AVERAGE}```",
        f"Copy the following text exactly, replacing 'river' with 'stream' everywhere:\n\n{STORY}",
        f"Correct the spelling in this text and return the whole text:\n\n{MISSPELT}",
    ],
    "echo-short": [
        f"Repeat the following text exactly, word for word:\n\n{PASSAGE}",
        f"Rewrite this function with the variable `subtotal` renamed to `net`. Output "
        f"only the code.\n\n{CODE}",
        f"Copy this paragraph, replacing 'river' with 'stream':\n\n{PASSAGE}",
        f"Quote the sentences of this text that mention the school:\n\n{PASSAGE}"],
    "chat": ["What are three good habits for better sleep?", "Name some fruits rich in vitamin C.",
             "How do I make a cup of green tea?", "Give me two ideas for a weekend trip."],
    "long": ["Write a long story about a lighthouse keeper who finds a message in a bottle.",
             "Write a detailed essay about the history of bicycles."],
    "echo-holdout": [
        "Rename this function to `parse_interval` and return the whole function."
        f"\n\n```python\n{DURATION}```",
        f"Add a `__repr__` method to this class and return the complete class.\n\n```python\n{ACCOUNT}```",
        "Rewrite this function to use f-strings instead of % formatting. Return the whole "
        f"function.\n\n```python\n{REPORT}```",
        f"Add a JSDoc comment to this function and return the whole function.\n\n```javascript\n{JS}```",
        "Add a condition to this query so that only users whose `active` column is true are "
        f"counted. Return the whole query.\n\n```sql\n{SQL}```",
        f"Copy the following text exactly, replacing 'Anna' with 'Maria' everywhere:\n\n{LIBRARY}",
        f"Correct the spelling in this text and return the whole text:\n\n{TYPOS}",
        f"Repeat the second paragraph of this text word for word:\n\n{LIBRARY}",
    ],
}


def lookup_share(prompt: list[int], answer: list[int]) -> float:
    """The share of ``answer``'s tokens that prompt lookup (``NgramProposer``, one token)
    predicts from the prompt and the answer before it."""
    from thinkstream.speculative.ngram import NgramProposer

    ngram, text, hits = NgramProposer(), list(prompt) + list(answer), 0
    for i in range(len(prompt), len(text)):
        hits += ngram.lookup("x", text[:i], 1).tokens == [text[i]]
    return hits / max(len(answer), 1)


def main(argv: list[str] | None = None) -> int:
    """Print SmolLM2's (or ``--model``'s) greedy answer to every prompt of the workloads."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--model", default=None)
    p.add_argument("--workloads", default="echo,echo-short")
    p.add_argument("--max-tokens", type=int, default=ECHO_MAX_TOKENS)
    args = p.parse_args(argv)
    from thinkstream.llm import LLM
    from thinkstream.sampling_params import SamplingParams

    llm = LLM(args.model, num_threads=1)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    for w in args.workloads.split(","):
        for text in WORKLOADS[w]:
            ids = llm.chat_prompt([{"role": "user", "content": text}])
            out = llm.generate([ids], params)[0].outputs[0]
            print(f"=== {w}: prompt {len(ids)} tokens, answer {len(out.token_ids)} tokens "
                  f"({out.finish_reason}), prompt lookup predicts "
                  f"{lookup_share(ids, out.token_ids):.0%}\n{out.text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
