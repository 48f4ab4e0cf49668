"""Writes the shipped task prompts: customer-support requests for an online shop.

Templated but varied (product, order number, problem, tone, detail), 300 prompts, split by a fixed
rule into train.jsonl (240) and heldout.jsonl (60). Deterministic: re-running gives the same files.
Run: python3 examples/support/make_prompts.py
"""

import json
import random
from pathlib import Path

rng = random.Random(20261129)
products = ["wireless headphones", "running shoes", "coffee grinder", "yoga mat", "laptop sleeve", "desk lamp",
            "winter jacket", "phone case", "blender", "backpack", "electric kettle", "smart watch", "board game",
            "office chair", "water bottle", "bluetooth speaker", "sunglasses", "cookware set", "toaster", "keyboard"]
problems = [
    "arrived damaged, the box was crushed and the {p} is cracked",
    "has not arrived yet although the tracking page said it was delivered {d} days ago",
    "was charged twice on my credit card",
    "is the wrong size, I need to exchange it",
    "stopped working after {d} days",
    "is missing a part that should have been in the box",
    "was delivered to the wrong address",
    "came in a different colour than the one I ordered",
    "was cheaper on your website the day after I bought it, can I get the difference back",
    "was a gift and I would like to return it without a receipt",
]
questions = [
    "How do I reset my password? The reset e-mail never arrives.",
    "Can I change the delivery address of order #{o} after placing it?",
    "Do you ship to {c}, and how long does it take?",
    "How long does a refund take to show up on my card?",
    "My discount code {code} says it is invalid. What can I do?",
    "How do I cancel my subscription before the next billing date?",
    "The app crashes every time I open my order history. Any fix?",
    "Can I pick up order #{o} in a store instead of having it delivered?",
    "What payment methods do you accept for orders over ${amount}?",
    "Is there a warranty on the {p}, and how do I claim it?",
]
countries = ["Canada", "Germany", "Japan", "Brazil", "Australia", "Norway", "Mexico", "India"]
tones = ["", "Please help. ", "This is the second time I'm writing. ", "Thanks in advance! ", "I'm quite upset. "]


def one(i):
    p = rng.choice(products)
    o = rng.randint(10000, 99999)
    if rng.random() < 0.55:
        body = f"My order #{o} ({p}) " + rng.choice(problems).format(p=p, d=rng.randint(2, 30)) + "."
        body += " What should I do?" if rng.random() < 0.5 else " Can you help me?"
    else:
        body = rng.choice(questions).format(o=o, c=rng.choice(countries), code="SAVE" + str(rng.randint(10, 50)),
                                            amount=rng.choice([100, 250, 500]), p=p)
    return {"messages": [{"role": "user", "content": rng.choice(tones) + body}], "metadata": {"id": f"support-{i:03d}"}}


prompts = [one(i) for i in range(300)]
here = Path(__file__).resolve().parent
with open(here / "train.jsonl", "w") as train, open(here / "heldout.jsonl", "w") as heldout:
    for i, p in enumerate(prompts):
        (heldout if i % 5 == 4 else train).write(json.dumps(p) + "\n")
print("wrote", here / "train.jsonl", "and", here / "heldout.jsonl")
