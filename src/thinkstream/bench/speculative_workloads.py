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
