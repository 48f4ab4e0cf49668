"""Writes replay traffic for the extraction-guard benchmark: benign keys mixed with attackers.

Benign prompts are real, human-written task inputs from BIG-bench (157 tasks, ~38k inputs, from
the `bigbench` PyPI sdist); each benign key has 1-4 interests (tasks), asks some questions outside
them, follows up on earlier questions, may use a fixed system prompt, logprobs or short
completions, and sends a heavy-tailed number of requests (log-normal, median 40 a day, the top
1% several hundred to 3,000) in sessions over a day. One benign key in 50 is instead an application
serving many people from one or two tasks at a harvester's pace (300-2,500 requests an hour for
2-8 hours): the hard case for any volume-based rule.

The traffic covers --days days (default 2); benign keys and applications come back every day with
similar habits, so from the second day each key has a history of its own. Attackers are new keys
on the last day, each starting at a random time:
  harvest-template  one key, ~1,800 requests/hour, a handful of instruction templates whose slot is
                    a topic from a broad list (templated harvesting)
  dataset-walk      one key, ~1,800/hour, BIG-bench inputs from every task, wrapped in an instruction
  cot               one key, ~1,800/hour, inputs from every task plus a reasoning-elicitation phrase
  sweep             one key, ~600/hour, 1-token completions with top_logprobs 20, some with a varying
                    logit_bias (a logprob sweep)
  spread            the template harvester over 8 keys, ~225/hour each (under a heavy user's volume)

Usage: make_traffic.py INPUTS.json OUT.jsonl --seed S [--benign N] [--attackers R] [--calibration]
"""

import argparse
import json
import math
import random

TOPICS = """photosynthesis; the French Revolution; plate tectonics; Keynesian economics; the immune system; quantum
entanglement; Renaissance painting; the Roman Republic; machine learning; climate change; supply and demand;
the theory of evolution; black holes; the Cold War; protein folding; jazz improvisation; the printing press;
the water cycle; game theory; the human genome; cryptocurrency; the Industrial Revolution; volcanoes; the
stock market; Shakespeare's tragedies; the Silk Road; antibiotics; nuclear fusion; the Ottoman Empire;
impressionism; the Great Depression; coral reefs; the periodic table; democracy in ancient Athens; neural
networks; the Big Bang; the Meiji Restoration; urban planning; the circulatory system; existentialism;
the Mongol Empire; renewable energy; the theory of relativity; Baroque music; the Amazon rainforest;
inflation; the Reformation; the nervous system; compilers; operating systems; the Hundred Years' War;
the Byzantine Empire; CRISPR; the Apollo program; Greek mythology; the Treaty of Versailles; glaciers;
the gold standard; epidemiology; utilitarianism; the Aztec civilization; semiconductors; the Internet;
the Harlem Renaissance; fermentation; the American Civil War; monetary policy; string theory; migration
of birds; the Enlightenment; vaccines; the Cuban Missile Crisis; microeconomics; tectonic earthquakes;
the Mughal Empire; Romantic poetry; public key cryptography; the Dust Bowl; sleep; the Suez Canal;
behavioural economics; the Han dynasty; desert ecosystems; the Magna Carta; general anesthesia;
the Bauhaus; deep sea vents; the Manhattan Project; sourdough bread; chess strategy; the Maya calendar;
bond markets; the Scientific Revolution; tidal energy; the Napoleonic Wars; the placebo effect""".replace("\n", " ")
TOPICS = [t.strip() for t in TOPICS.split(";") if t.strip()]

TEMPLATES = [
    "Write a detailed, comprehensive explanation of {x} for a university student, with examples.",
    "Explain {x} in depth, covering its history, key ideas and open questions.",
    "Give a thorough, well-structured overview of {x}, as a textbook chapter would.",
    "Write a long, accurate and detailed essay about {x}.",
    "Teach me everything important about {x}, step by step, with examples.",
]
WRAPPERS = [
    "Answer the following carefully and completely.\n\n{x}",
    "{x}\n\nGive a complete and well-explained answer.",
    "Please respond to this in detail:\n{x}",
]
REASONING = [
    "Think step by step and show your reasoning before giving the final answer.",
    "Let's think step by step.",
    "Explain your reasoning in detail, then give the answer.",
    "Walk me through your thought process before answering.",
]
FOLLOW_UPS = [
    "Can you explain that again more simply? {x}",
    "I still don't get it: {x}",
    "{x} Please give a shorter answer this time.",
    "Following up on my earlier question: {x}",
    "{x}",
]
SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise assistant for our company's internal tools. Answer briefly.",
    "You are a friendly tutor for high-school students.",
    "You answer questions for a puzzle-solving community. Be accurate.",
]
PREFIXES = [
    "The capital of", "In 1905, Albert Einstein", "The most important thing about", "Once upon a time",
    "The best way to learn", "def fibonacci(n):", "The mitochondria is", "Breaking news:", "My favourite food is",
    "The theory of evolution states", "To be or not to be", "The stock market fell because", "Water boils at",
]

DAY = 86400.0


def body(rng, messages, **extra):
    b = {"model": "student", "messages": messages}
    b.update(extra)
    return b


def benign_key(rng, key, tasks, names, start, days):
    interests = rng.sample(names, rng.randint(1, 4))
    daily = min(3000, max(1, int(math.exp(rng.gauss(math.log(40), 1.3)))))
    system = rng.choice(SYSTEMS) if rng.random() < 0.3 else None
    uses_logprobs = rng.random() < 0.1
    short = rng.random() < 0.05  # a classifier app: one-token answers
    lines, asked = [], []
    for day in range(days):
        total = max(1, int(daily * rng.uniform(0.6, 1.4)))
        t = start + day * DAY
        in_session = 0
        for _ in range(total):
            if in_session <= 0:
                t += rng.expovariate(1.0 / (DAY / max(4, total / 10)))  # next session
                in_session = rng.randint(1, 40)
            else:
                t += rng.uniform(5, 90)
            in_session -= 1
            if asked and rng.random() < 0.25:
                text = rng.choice(FOLLOW_UPS).format(x=rng.choice(asked[-10:]))
            else:
                task = rng.choice(interests) if rng.random() < 0.8 else rng.choice(names)
                text = rng.choice(tasks[task])
                asked.append(text)
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            extra = {"max_tokens": 1 if short else rng.choice([64, 256, 512, 1024])}
            if uses_logprobs or short:
                extra.update(logprobs=True, top_logprobs=rng.choice([1, 2, 5, 5, 10, 20]))
            lines.append({"t": t, "key": key, "label": "benign", "body": body(rng, messages, **extra)})
    return lines


def benign_app(rng, key, tasks, names, start, days):
    """An application serving many people from one or two tasks, at a harvester's pace: 300 to
    2,500 requests an hour for 2-8 hours a day, at about the same time every day."""
    interests = rng.sample(names, rng.randint(1, 2))
    system = rng.choice(SYSTEMS) if rng.random() < 0.6 else None
    rate, opens, hours = rng.uniform(300, 2500), rng.random() * DAY * 0.6, rng.uniform(2, 8)
    lines = []
    for day in range(days):
        t = start + day * DAY + opens + rng.uniform(-1800, 1800)
        end = t + hours * 3600 * rng.uniform(0.8, 1.2)
        today = rate * rng.uniform(0.7, 1.3)
        while t < end:
            t += rng.expovariate(today / 3600)
            text = rng.choice(tasks[rng.choice(interests)])
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            lines.append({"t": t, "key": key, "label": "benign-app", "body": body(rng, messages, max_tokens=512)})
    return lines


def attacker(rng, kind, keys, tasks, names, start, count):
    lines = []
    t = start
    all_inputs = [x for n in names for x in tasks[n]]
    for i in range(count):
        key = keys[i % len(keys)]
        if kind in ("harvest-template", "spread"):
            text = rng.choice(TEMPLATES).format(x=rng.choice(TOPICS))
            extra = {"max_tokens": 1024}
            t += rng.uniform(1, 3) / (1 if kind == "harvest-template" else 1)
        elif kind == "dataset-walk":
            text = rng.choice(WRAPPERS).format(x=rng.choice(all_inputs))
            extra = {"max_tokens": 1024}
            t += rng.uniform(1, 3)
        elif kind == "cot":
            x = rng.choice(all_inputs)
            text = f"{x}\n\n{rng.choice(REASONING)}" if rng.random() < 0.5 else f"{rng.choice(REASONING)}\n\n{x}"
            extra = {"max_tokens": 2048}
            t += rng.uniform(1, 3)
        elif kind == "sweep":
            text = f"{rng.choice(PREFIXES)} {rng.choice(TOPICS)}"
            extra = {"max_tokens": 1, "logprobs": True, "top_logprobs": 20}
            if rng.random() < 0.3:
                extra["logit_bias"] = {str(rng.randrange(49152)): 100}
            t += rng.uniform(3, 9)
        else:
            raise ValueError(kind)
        lines.append({"t": t, "key": key, "label": kind, "body": body(rng, [{"role": "user", "content": text}], **extra)})
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--benign", type=int, default=1000)
    ap.add_argument("--attackers", type=int, default=3, help="repetitions of each attack kind")
    ap.add_argument("--calibration", action="store_true", help="benign keys only")
    ap.add_argument("--days", type=int, default=2, help="attackers start on the last day")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tasks = json.load(open(args.inputs))
    names = sorted(tasks)
    start = 1_795_910_400.0
    lines = []
    prefix = "cal" if args.calibration else "b"
    for k in range(args.benign):
        # One key in 50 is an application at a harvester's volume.
        make = benign_app if k % 50 == 49 else benign_key
        lines += make(rng, f"{prefix}{args.seed}-{k:04d}", tasks, names, start, args.days)
    if not args.calibration:
        start += (args.days - 1) * DAY
        for r in range(args.attackers):
            for kind in ["harvest-template", "dataset-walk", "cot", "sweep"]:
                begin = start + rng.uniform(0, DAY * 0.6)
                lines += attacker(rng, kind, [f"{kind}-{r}"], tasks, names, begin, 3000 if kind != "sweep" else 600)
            begin = start + rng.uniform(0, DAY * 0.6)
            lines += attacker(rng, "spread", [f"spread-{r}-{i}" for i in range(8)], tasks, names, begin, 4000)
    lines.sort(key=lambda l: l["t"])
    with open(args.out, "w") as f:
        for l in lines:
            f.write(json.dumps(l, ensure_ascii=False) + "\n")
    print(f"{len(lines)} requests, {len({l['key'] for l in lines})} keys -> {args.out}")


if __name__ == "__main__":
    main()
