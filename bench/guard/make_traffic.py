"""Writes replay traffic for the extraction-guard benchmark: benign people and applications mixed
with attackers, one request per line ({"t", "key", "label", "ip", "endpoint", "body"}).

Benign people send real conversations from ShareGPT (~11k that people shared from ChatGPT; see
sharegpt_conversations.py), turn by turn with the history, in sessions, from 1 to ~1,500 requests a
day (log-normal, median 30); some with a system prompt, top_logprobs or n > 1; some behind a shared
office network. Benign applications send steady machine traffic from the first day:
  support      a product's help desk: a fixed system prompt, conversations on one domain, 400-1,200/h
  autocomplete code completion (/v1/completions) on windows of real Python source, 16-64 tokens,
               1,500-2,500/h
  eval         an evaluation harness: HumanEval samples, multiple-choice items read through
               top_logprobs 20 with one token, and perplexity with prompt_logprobs 1, in runs
  classifier   one-label answers with top_logprobs 5 over every kind of user message, 1,000-2,000/h
  summariser   a fixed instruction over every kind of document, 256 tokens, 300-900/h
  qa-bot       a stateless question box: each real user question sent alone, 200-600/h — the
               case no content signal tells from a dataset walk on its first day
Attackers are new keys on the last day, each starting at a random time:
  harvest-template  ~1,800/h, a few instruction templates with a topic slot
  slow-harvest      120-290/h, paraphrased instructions over broad topics, until the day ends
  hydra             40 keys at 300-1,200 a day each (paraphrases and real prompts), over a few
                    subnets, many subnets, or one per ten keys
  paraphrase        600/h, every request worded differently (combinatorial paraphrase)
  system-template   600/h, the instruction in the system message, the topic alone as the user's
  sweep-below-cap   1-2 tokens with top_logprobs one step (or more) below the cap
  prompt-logprobs   prompt_logprobs 5-20 over real answers (teacher forcing through the prompt)
  logit-bias        one-token requests probing the distribution with a moving logit_bias
  cot               real prompts plus a reasoning-elicitation phrase, 400/h
  dataset-walk      real user prompts (ShareGPT's other half) replayed one by one, 200-300/h
  fake-history      paraphrased instructions behind a made-up earlier exchange, 300/h
  padded            instructions behind ~600 tokens of real text, so answers are not long next
                    to the prompt, 300/h
  hydra-wide        100 keys at 100-200 a day each, each from its own network

Usage: make_traffic.py SHAREGPT.json HUMANEVAL.jsonl.gz PY_SOURCE_DIR OUT.jsonl --seed S
       [--benign N] [--attackers R] [--calibration] [--days D]
"""

import argparse
import glob
import gzip
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
ASPECTS = ["", "the history of ", "the economics of ", "the science behind ", "common misconceptions about ",
           "the future of ", "the ethics of ", "the mathematics of ", "key debates about ", "the basics of "]

TEMPLATES = [
    "Write a detailed, comprehensive explanation of {x} for a university student, with examples.",
    "Explain {x} in depth, covering its history, key ideas and open questions.",
    "Give a thorough, well-structured overview of {x}, as a textbook chapter would.",
    "Write a long, accurate and detailed essay about {x}.",
]
# Paraphrase parts: 12 x 12 x 7 x 7 x 3 orders, so near-duplicate detection on wording sees few repeats.
VERBS = ["Write", "Compose", "Produce", "Draft", "Give me", "Provide", "Create", "Put together", "Prepare",
         "I need", "Could you write", "Please produce"]
FORMS = ["a detailed explanation of", "an in-depth article on", "a comprehensive overview of", "a thorough essay about",
         "a long-form guide to", "an extensive tutorial covering", "a complete primer on", "a rigorous discussion of",
         "an exhaustive write-up about", "a well-researched piece on", "a full lecture on", "a deep dive into"]
AUDIENCES = ["", " for a university student", " for beginners", " aimed at experts", " suitable for a textbook",
             " for a general audience", " for a high-school class"]
EXTRAS = ["", " Include examples.", " Cover history, key ideas and open questions.", " Use headings and bullets.",
          " Be accurate and thorough.", " Make it at least 1,000 words.", " Explain every term you use."]
SYSTEM_TEMPLATES = [
    "You are an expert encyclopedia writer. For the topic the user names, write a long, detailed, accurate article "
    "with sections on history, key concepts, examples and open questions.",
    "You write textbook chapters. Whatever subject the user gives, produce a comprehensive chapter covering it in "
    "depth, with worked examples.",
    "Act as a university lecturer. Turn the user's topic into a complete lecture: definitions, history, main ideas, "
    "examples, and further reading.",
]
REASONING = [
    "Think step by step and show your reasoning before giving the final answer.",
    "Let's think step by step.",
    "Explain your reasoning in detail, then give the answer.",
    "Walk me through your thought process before answering.",
]
PREFIXES = ["The capital of", "In 1905,", "The most important thing about", "Once upon a time", "The best way to learn",
            "The mitochondria is", "Breaking news:", "My favourite", "The theory states", "To be or not to be",
            "Water boils at", "The reason why"]
SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise assistant for our company's internal tools. Answer briefly.",
    "You are a friendly tutor for high-school students.",
    "You answer questions for a puzzle-solving community. Be accurate.",
]
SUPPORT = [  # (system prompt, words that pick the conversations of its domain)
    ("You are the help desk of PyShop, a Python hosting service. Help customers with their Python code and "
     "deployments. Be friendly and precise.", ["python", "pandas", "django", "flask"]),
    ("You are the assistant inside ResumeCraft. Help users write and improve resumes and cover letters.",
     ["resume", "cover letter", "job", "interview"]),
    ("You are the support bot of GrowthLab, a marketing platform. Help users with campaigns, ads and copy.",
     ["marketing", "instagram", "seo", "ads", "brand"]),
    ("You are DataDesk's SQL assistant. Help analysts write and fix SQL queries and explain results.",
     ["sql", "query", "database", "table"]),
]
CLASSIFY = ("Classify the user's message into exactly one of: coding, writing, business, education, health, "
            "entertainment, other. Answer with the label only.")
SUMMARISE = "Summarise the following text in three sentences for a busy reader."

DAY = 86400.0


def chat(messages, **extra):
    b = {"model": "student", "messages": messages}
    b.update(extra)
    return b


def completion(prompt, **extra):
    b = {"model": "student", "prompt": prompt}
    b.update(extra)
    return b


def line(t, key, label, ip, body, endpoint="chat", app=None):
    out = {"t": t, "key": key, "label": label, "ip": ip, "endpoint": endpoint, "body": body}
    if app:
        out["app"] = app
    return out


def random_ip(rng, subnet=None):
    subnet = subnet or f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}"
    return f"{subnet}.{rng.randint(1, 254)}"


def topic(rng):
    return rng.choice(ASPECTS) + rng.choice(TOPICS)


def paraphrase(rng, x):
    verb, form, aud, extra = rng.choice(VERBS), rng.choice(FORMS), rng.choice(AUDIENCES), rng.choice(EXTRAS)
    order = rng.randrange(3)
    if order == 0:
        return f"{verb} {form} {x}{aud}.{extra}"
    if order == 1:
        return f"Topic: {x}. {verb} {form} this topic{aud}.{extra}"
    return f"{extra.strip()} {verb} {form} {x}{aud}.".strip()


def person(rng, key, convs, start, days, ip):
    daily = min(1500, max(1, int(math.exp(rng.gauss(math.log(30), 1.2)))))
    system = rng.choice(SYSTEMS) if rng.random() < 0.3 else None
    k = rng.choice([1, 2, 5, 10, 20]) if rng.random() < 0.1 else None
    habits = rng.sample([None, 256, 512, 1024, 2048], 2)
    n = 2 if rng.random() < 0.03 else 1
    temperature = rng.choice([None, 0.2, 0.7, 1.0])
    lines = []
    for day in range(days):
        total = max(1, int(daily * rng.uniform(0.6, 1.4)))
        t = start + day * DAY + rng.uniform(0, DAY * 0.3)
        sent = 0
        while sent < total:
            t += rng.expovariate(1.0 / (DAY / max(4, total / 8)))  # the next session
            for _ in range(rng.randint(1, 4)):  # conversations in it
                conv = rng.choice(convs)
                history = [{"role": "system", "content": system}] if system else []
                for turn in range(0, len(conv), 2):
                    if sent >= total or (turn and rng.random() < 0.15):
                        break
                    messages = history + [{"role": "user", "content": conv[turn]}]
                    extra = {}
                    if (mt := rng.choice(habits)) is not None:
                        extra["max_tokens"] = mt
                    if temperature is not None:
                        extra["temperature"] = temperature
                    if k is not None:
                        extra.update(logprobs=True, top_logprobs=k)
                    if n > 1:
                        extra["n"] = n
                    lines.append(line(t, key, "benign", ip, chat(messages, **extra)))
                    sent += 1
                    reply = conv[turn + 1] if turn + 1 < len(conv) else ""
                    history = (history + [messages[-1], {"role": "assistant", "content": reply}])[-6:]
                    t += rng.uniform(20, 240)
                t += rng.uniform(30, 600)
    return lines


def app_hours(rng, start, days, rate, hours, send):
    """Calls send(t) at a Poisson rate (per hour) for `hours` at about the same time each day."""
    opens = rng.uniform(0, DAY - hours * 3600)
    for day in range(days):
        t = start + day * DAY + opens + rng.uniform(-1800, 1800)
        end = t + hours * 3600 * rng.uniform(0.85, 1.15)
        today = rate * rng.uniform(0.8, 1.2)
        while t < end:
            t += rng.expovariate(today / 3600)
            send(t)


def support_app(rng, key, convs, start, days, ip, index):
    system, words = SUPPORT[index % len(SUPPORT)]
    mine = [c for c in convs if any(w in c[0].lower() for w in words)] or convs
    lines, state = [], {"conv": None, "turn": 0, "history": []}

    def send(t):
        if state["conv"] is None or state["turn"] >= len(state["conv"]) or rng.random() < 0.3:
            state.update(conv=rng.choice(mine), turn=0, history=[])
        conv, turn = state["conv"], state["turn"]
        messages = [{"role": "system", "content": system}] + state["history"] + [{"role": "user", "content": conv[turn]}]
        lines.append(line(t, key, "benign-app", ip, chat(messages, max_tokens=512, temperature=0.3), app="support"))
        reply = conv[turn + 1] if turn + 1 < len(conv) else ""
        state["history"] = (state["history"] + [messages[-1], {"role": "assistant", "content": reply}])[-4:]
        state["turn"] = turn + 2

    app_hours(rng, start, days, rng.uniform(400, 1200), rng.uniform(10, 16), send)
    return lines


def autocomplete_app(rng, key, sources, start, days, ip):
    lines = []
    max_tokens = rng.choice([16, 32, 64])

    def send(t):
        text = rng.choice(sources)
        end = rng.randint(min(len(text), 200), len(text))
        prompt = text[max(0, end - rng.randint(200, 1500)):end]
        lines.append(line(t, key, "benign-app", ip, completion(prompt, max_tokens=max_tokens, temperature=0.2),
                          "completions", app="autocomplete"))

    app_hours(rng, start, days, rng.uniform(1500, 2500), rng.uniform(8, 12), send)
    return lines


def eval_app(rng, key, convs, humaneval, start, days, ip):
    """Evaluation runs: HumanEval with 10 samples per problem, a multiple-choice set read
    through top_logprobs 20 after a few-shot prefix, and perplexity through prompt_logprobs 1."""
    short = [c for c in convs if len(c) >= 2 and len(c[0]) < 300]
    shots = "\n\n".join(f"Question: {c[0]}\nAnswer: {c[1][:200]}" for c in short[:3])
    items = []
    for i in range(2000):
        c = short[(i * 7919) % len(short)]
        wrong = [short[(i * 31 + j * 17) % len(short)][1][:120] for j in range(3)]
        choices = wrong[:]
        choices.insert(i % 4, c[1][:120])
        items.append(f"{shots}\n\nQuestion: {c[0]}\n" + "\n".join(f"{'ABCD'[j]}. {x}" for j, x in enumerate(choices))
                     + "\nAnswer:")
    answers = [c[1] for c in convs if len(c) >= 2 and len(c[1]) > 400]
    lines = []
    for day in range(days):
        t = start + day * DAY + rng.uniform(0, DAY * 0.5)
        for run in rng.sample(["humaneval", "mc", "perplexity"], 2):
            rate = rng.uniform(2000, 4000)
            if run == "humaneval":
                reqs = [(completion(p, max_tokens=512, temperature=0.8, stop=["\ndef "]), "completions")
                        for p in humaneval for _ in range(10)]
            elif run == "mc":
                reqs = [(completion(p, max_tokens=1, logprobs=20, temperature=0.0), "completions") for p in items]
            else:
                reqs = [(completion(a, max_tokens=1, prompt_logprobs=1), "completions")
                        for a in rng.sample(answers, 1000)]
            for body, endpoint in reqs:
                t += rng.expovariate(rate / 3600)
                lines.append(line(t, key, "benign-app", ip, body, endpoint, app="eval"))
            t += rng.uniform(1800, 4 * 3600)
    return lines


def classifier_app(rng, key, convs, start, days, ip):
    lines = []

    def send(t):
        body = chat([{"role": "system", "content": CLASSIFY}, {"role": "user", "content": rng.choice(convs)[0]}],
                    max_tokens=2, temperature=0.0, logprobs=True, top_logprobs=5)
        lines.append(line(t, key, "benign-app", ip, body, app="classifier"))

    app_hours(rng, start, days, rng.uniform(1000, 2000), rng.uniform(10, 14), send)
    return lines


def summariser_app(rng, key, convs, start, days, ip):
    docs = [c[1] for c in convs if len(c) >= 2 and len(c[1]) > 600]
    lines = []

    def send(t):
        body = chat([{"role": "system", "content": SUMMARISE}, {"role": "user", "content": rng.choice(docs)}],
                    max_tokens=256, temperature=0.3)
        lines.append(line(t, key, "benign-app", ip, body, app="summariser"))

    app_hours(rng, start, days, rng.uniform(300, 900), rng.uniform(6, 10), send)
    return lines


def qa_bot_app(rng, key, convs, start, days, ip):
    questions = [c[0] for c in convs if len(c[0]) < 1500]
    lines = []

    def send(t):
        body = chat([{"role": "user", "content": rng.choice(questions)}], max_tokens=rng.choice([512, 1024]))
        lines.append(line(t, key, "benign-app", ip, body, app="qa-bot"))

    app_hours(rng, start, days, rng.uniform(200, 600), rng.uniform(8, 12), send)
    return lines


def attack_request(rng, kind, prompts, answers, cap):
    """One request of an attack: (body, endpoint)."""
    if kind == "harvest-template":
        return chat([{"role": "user", "content": rng.choice(TEMPLATES).format(x=topic(rng))}], max_tokens=1024), "chat"
    if kind in ("slow-harvest", "paraphrase"):
        return chat([{"role": "user", "content": paraphrase(rng, topic(rng))}], max_tokens=2048), "chat"
    if kind == "hydra":
        text = paraphrase(rng, topic(rng)) if rng.random() < 0.5 else rng.choice(prompts)
        return chat([{"role": "user", "content": text}], max_tokens=2048, temperature=0.7), "chat"
    if kind == "system-template":
        messages = [{"role": "system", "content": rng.choice(SYSTEM_TEMPLATES)}, {"role": "user", "content": topic(rng)}]
        return chat(messages, max_tokens=2048), "chat"
    if kind == "sweep-below-cap":
        words = rng.choice(answers).split()
        text = " ".join(words[: rng.randint(3, 40)]) if rng.random() < 0.5 else f"{rng.choice(PREFIXES)} {topic(rng)}"
        k = rng.choice([cap - 1, cap - 2, cap // 2])
        return chat([{"role": "user", "content": text}], max_tokens=rng.choice([1, 2]), logprobs=True,
                    top_logprobs=k), "chat"
    if kind == "prompt-logprobs":
        return completion(rng.choice(answers), max_tokens=1, prompt_logprobs=rng.choice([5, 10, 20])), "completions"
    if kind == "logit-bias":
        text = f"{rng.choice(PREFIXES)} {topic(rng)}"
        bias = {str(rng.randrange(151_000)): rng.choice([5, 10, 20, 40, 80, 100])}
        return completion(text, max_tokens=1, logit_bias=bias, temperature=0.0), "completions"
    if kind == "cot":
        x = rng.choice(prompts)
        text = f"{x}\n\n{rng.choice(REASONING)}" if rng.random() < 0.5 else f"{rng.choice(REASONING)}\n\n{x}"
        return chat([{"role": "user", "content": text}], max_tokens=2048), "chat"
    if kind == "dataset-walk":
        return chat([{"role": "user", "content": rng.choice(prompts)}], max_tokens=2048), "chat"
    if kind == "fake-history":
        fake = [{"role": "user", "content": rng.choice(prompts)}, {"role": "assistant", "content": rng.choice(answers)}]
        return chat(fake + [{"role": "user", "content": paraphrase(rng, topic(rng))}], max_tokens=2048), "chat"
    if kind == "padded":
        context = "\n\n".join(rng.sample(answers, 2))[:2400]
        text = f"Background notes:\n{context}\n\n{paraphrase(rng, topic(rng))}"
        return chat([{"role": "user", "content": text}], max_tokens=1024), "chat"
    raise ValueError(kind)


RATES = {  # requests per hour, requests in all (None: until the day ends)
    "harvest-template": ((1500, 2100), 3000),
    "slow-harvest": ((120, 290), None),
    "paraphrase": ((500, 700), 3000),
    "system-template": ((500, 700), 3000),
    "sweep-below-cap": ((400, 800), 3000),
    "prompt-logprobs": ((150, 300), 2000),
    "logit-bias": ((400, 800), 3000),
    "cot": ((300, 500), 3000),
    "dataset-walk": ((200, 300), None),
    "fake-history": ((250, 350), 3000),
    "padded": ((250, 350), 3000),
}


def attacker(rng, kind, rep, prompts, answers, day_start, cap):
    lines = []
    if kind in ("hydra", "hydra-wide"):
        # hydra: 40 keys, each at its own daily volume through the whole day, behind a few
        # subnets (rep 0), many (rep 1), or one subnet per ten keys (rep 2); hydra-wide: 100
        # keys at 100-200 a day, each from its own network.
        wide = kind == "hydra-wide"
        keys, (low, high) = (100, (100, 200)) if wide else (40, (300, 1200))
        subnets = [random_ip(rng).rsplit(".", 1)[0] for _ in range(keys)]
        for i in range(keys):
            key = f"{kind}-{rep}-{i:02d}"
            ip = random_ip(rng, subnets[i] if wide or rep == 1 else subnets[i % 4] if rep == 0 else subnets[i // 10])
            for _ in range(int(rng.uniform(low, high))):
                body, endpoint = attack_request(rng, "hydra", prompts, answers, cap)
                lines.append(line(day_start + rng.uniform(0, DAY), key, kind, ip, body, endpoint))
        return lines
    (low, high), count = RATES[kind]
    rate = rng.uniform(low, high)
    t = day_start + rng.uniform(0, DAY * (0.4 if count is None else 0.6))
    key, ip = f"{kind}-{rep}", random_ip(rng)
    while t < day_start + DAY and (count is None or len(lines) < count):
        body, endpoint = attack_request(rng, kind, prompts, answers, cap)
        lines.append(line(t, key, kind, ip, body, endpoint))
        t += rng.expovariate(rate / 3600)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sharegpt")
    ap.add_argument("humaneval")
    ap.add_argument("sources", help="a directory of Python files (autocomplete contexts)")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--benign", type=int, default=1000)
    ap.add_argument("--attackers", type=int, default=3, help="repetitions of each attack kind")
    ap.add_argument("--calibration", action="store_true", help="benign keys only")
    ap.add_argument("--days", type=int, default=2, help="attackers start on the last day")
    ap.add_argument("--cap", type=int, default=20, help="the server's most top_logprobs")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    convs = json.load(open(args.sharegpt))
    # People and attackers draw on different halves of the conversations.
    people, theirs = convs[0::2], convs[1::2]
    prompts = [c[0] for c in theirs if len(c[0]) > 20]
    answers = [c[1] for c in theirs if len(c) > 1 and len(c[1]) > 200]
    with gzip.open(args.humaneval, "rt") as f:
        humaneval = [json.loads(l)["prompt"] for l in f if l.strip()]
    sources = []
    for path in sorted(glob.glob(f"{args.sources}/*.py"))[:400]:
        with open(path, errors="replace") as f:
            text = f.read()
        if len(text) > 2000:
            sources.append(text[:60000])
    start = 1_795_910_400.0
    offices = [random_ip(rng).rsplit(".", 1)[0] for _ in range(20)]
    prefix = "cal" if args.calibration else "b"
    apps = [lambda r, k, ip, i: support_app(r, k, people, start, args.days, ip, i),
            lambda r, k, ip, i: autocomplete_app(r, k, sources, start, args.days, ip),
            lambda r, k, ip, i: eval_app(r, k, people, humaneval, start, args.days, ip),
            lambda r, k, ip, i: classifier_app(r, k, people, start, args.days, ip),
            lambda r, k, ip, i: summariser_app(r, k, people, start, args.days, ip),
            lambda r, k, ip, i: qa_bot_app(r, k, people, start, args.days, ip)]
    lines = []
    for k in range(args.benign):
        key = f"{prefix}{args.seed}-{k:04d}"
        if k % 50 == 49:  # one key in 50 is an application
            lines += apps[(k // 50) % len(apps)](rng, key, random_ip(rng), k // 300)
        else:
            ip = random_ip(rng, rng.choice(offices) if rng.random() < 0.15 else None)
            lines += person(rng, key, people, start, args.days, ip)
    if not args.calibration:
        day_start = start + (args.days - 1) * DAY
        for rep in range(args.attackers):
            for kind in ["hydra", "hydra-wide", *RATES]:
                lines += attacker(rng, kind, rep, prompts, answers, day_start, args.cap)
    lines.sort(key=lambda l: l["t"])
    with open(args.out, "w") as f:
        for l in lines:
            f.write(json.dumps(l, ensure_ascii=False) + "\n")
    print(f"{len(lines)} requests, {len({l['key'] for l in lines})} keys -> {args.out}")


if __name__ == "__main__":
    main()
